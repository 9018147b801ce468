"""projprune: projective pruning for decoupling weights (ECML PKDD 2025), and faster, exact variants.

Pure tensor code: solvers for the projection coefficients, greedy selection with the
paper's lazy tracking or exact rank-1 downdates, and in-place surgery on layer pairs.
See ``docs/algorithm.md`` for the derivations.
"""

from projprune._version import __version__
from projprune.calibration import ActivationStats, collect_activation_stats, recalibrate_batchnorm
from projprune.greedy import (
    PruneResult,
    apply_pruning,
    greedy_exact,
    greedy_global,
    greedy_lazy,
    refit_next_layer,
)
from projprune.methods import PAIR_METHODS, PairMethod, prune_pair, prune_pairs
from projprune.options import ProjectionOptions
from projprune.solvers import (
    SOLVERS,
    gram_inverse,
    precision_and_residuals,
    projection_distances,
    regularised_inverse,
    solve_closed,
    solve_fast,
    solve_naive,
    solve_normal_equations,
)
from projprune.surgery import (
    adapt_to_shapes,
    install_results,
    pair_matrices,
    prune_conv_pair,
    prune_linear_pair,
    prune_pairs_global,
    select_units,
    slice_conv_pair,
    slice_linear_pair,
    tensor_shapes,
)

#: The paper's named redistribution variants: name -> (alpha, beta, gamma).
VARIANTS: dict[str, tuple[float, float, float]] = {
    name: (spec.options.alpha, spec.options.beta, spec.options.gamma)
    for name, spec in PAIR_METHODS.items()
    if spec.kind == "lazy"
}


# Optional dependencies: the module a lazily imported name needs and the extra that installs it.
_EXTRAS = {"torch_pruning": ("Torch-Pruning", "tp")}


def _lazy(module: str, name: str):
    """``getattr(import_module(module), name)``; a missing optional dependency names the extra to install."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in _EXTRAS:
            raise
        label, extra = _EXTRAS[missing]
        raise ImportError(f"projprune.{name} needs {label} ({missing}), which is not installed: "
                          f"pip install 'projprune[{extra}]'") from exc


def __getattr__(name: str):
    # The Torch-Pruning plug-in is imported on first use, so the core does not import torch_pruning.
    if name == "ProjectiveImportance":
        return _lazy("projprune.importance", name)
    if name in ("CompensatingPruner", "CalibratedProjectiveImportance"):
        return _lazy("projprune.compensation", name)
    raise AttributeError(f"module 'projprune' has no attribute {name!r}")


__all__ = [
    "PAIR_METHODS",
    "ActivationStats",
    "ProjectionOptions",
    "__version__",
    "collect_activation_stats",
    "recalibrate_batchnorm",
    "refit_next_layer",
    "regularised_inverse",
    "install_results",
    "SOLVERS",
    "VARIANTS",
    "PairMethod",
    "ProjectiveImportance",
    "CompensatingPruner",
    "CalibratedProjectiveImportance",
    "PruneResult",
    "adapt_to_shapes",
    "apply_pruning",
    "gram_inverse",
    "greedy_exact",
    "greedy_global",
    "greedy_lazy",
    "pair_matrices",
    "precision_and_residuals",
    "projection_distances",
    "prune_conv_pair",
    "prune_linear_pair",
    "prune_pair",
    "prune_pairs",
    "prune_pairs_global",
    "select_units",
    "slice_conv_pair",
    "slice_linear_pair",
    "tensor_shapes",
    "solve_closed",
    "solve_fast",
    "solve_naive",
    "solve_normal_equations",
]
