"""One options object for how units are selected and how the survivors absorb them.

Every pruning entry point (``greedy_lazy``, ``greedy_exact``, ``greedy_global``,
``prune_linear_pair``, ``prune_conv_pair``, ``prune_pairs_global``) takes a
:class:`ProjectionOptions` and, for convenience, its fields as keyword overrides. Validation
lives here, once.

Vocabulary: *tracking* is how the greedy follows the coefficients while units leave
(``"lazy"``, the paper's, or ``"exact"``, rank-1 downdates); *solver* is how ``Q`` is computed
in one shot (``"closed"``, ``"fast"``, ``"naive"``: :data:`projprune.SOLVERS`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["TRACKINGS", "ProjectionOptions", "resolve_options"]

#: The two ways of tracking coefficients during the greedy (docs/algorithm.md §4, §5).
TRACKINGS = ("lazy", "exact")


def _check_number(value: Any, name: str, *, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ProjectionOptions:
    """Selection and redistribution settings (docs/algorithm.md §2, §4, §5, §8).

    Attributes:
        alpha, beta, gamma: redistribution strengths for ``W`` rows, ``b`` and ``V`` columns
            (the paper's ``proj550`` is ``(.5, .5, 0)``). Must be 0 with calibration statistics.
        lmbda: ridge regulariser λ ``>= 0``. Data-free: absolute. With calibration statistics:
            relative to the mean activation energy, ``λ = lmbda · trace(C) / n`` (scale-free).
        tracking: ``"lazy"`` (the paper's coefficient tracking) or ``"exact"`` (rank-1 downdates).
        decay: scale the strengths by ``1 - step / amount`` (the reference's ``fast_minimal``).
        v_uses_beta: scale ``V`` by the β-track, as the reference's ViT/GPT-2 code does.
        output_aware: multiply each unit's distance by the norm of its effective column of ``V``.
        compensate: fold each pruned unit into the next layer, ``v_j += q_ij v_i``.
        identity_activation: the activation between the layers is the identity; only then does
            data-free compensation also correct the next bias by ``c (b_i - q·b)``.
        mean_correction: with statistics, add the pruned units' mean contribution
            ``v_i (μ_i - Σ_j q_ij μ_j)`` to the next layer's bias (created if absent).
        refit: with statistics, replace the accumulated compensation by the least-squares next
            layer on the kept units, ``V' = V C[:, K] (C[K, K] + λI)^{-1}``.
    """

    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 0.0
    lmbda: float = 1e-3
    tracking: str = "lazy"
    decay: bool = True
    v_uses_beta: bool = False
    output_aware: bool = False
    compensate: bool = False
    identity_activation: bool = False
    mean_correction: bool = True
    refit: bool = False

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            _check_number(getattr(self, name), name)
        _check_number(self.lmbda, "lmbda", minimum=0.0)
        if self.tracking not in TRACKINGS:
            raise ValueError(f"tracking must be one of {TRACKINGS}, got {self.tracking!r}")
        for name in ("decay", "v_uses_beta", "output_aware", "compensate", "identity_activation",
                     "mean_correction", "refit"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> ProjectionOptions:
        """A validated copy with some fields changed (unknown names raise ``ValueError``)."""
        return resolve_options(self, changes)

    @property
    def redistributes(self) -> bool:
        """True when any of α, β, γ is non-zero."""
        return any(v != 0 for v in (self.alpha, self.beta, self.gamma))

    def check_calibrated(self) -> None:
        """Raise ``ValueError`` for settings that have no meaning on activation statistics."""
        if self.redistributes:
            raise ValueError(
                "alpha, beta and gamma must be 0 with calibration statistics (got "
                f"{self.alpha}, {self.beta}, {self.gamma}); compensate=True is the calibrated redistribution"
            )
        if self.v_uses_beta:
            raise ValueError("v_uses_beta has no meaning with calibration statistics; expected False")


_FIELDS = tuple(f.name for f in dataclasses.fields(ProjectionOptions))


def resolve_options(options: ProjectionOptions | None, overrides: dict[str, Any]) -> ProjectionOptions:
    """``options`` (default :class:`ProjectionOptions`) with keyword ``overrides`` applied.

    The old keyword ``solver="lazy"|"exact"`` is accepted as ``tracking`` with a
    ``DeprecationWarning`` ("solver" now only names the closed/fast/naive solvers).
    """
    if options is not None and not isinstance(options, ProjectionOptions):
        raise ValueError(f"options must be a ProjectionOptions or None, got {type(options).__name__}")
    overrides = dict(overrides)
    if "solver" in overrides:
        solver = overrides.pop("solver")
        warnings.warn("the keyword solver='lazy'|'exact' is deprecated; use tracking=", DeprecationWarning,
                      stacklevel=3)
        if solver not in TRACKINGS:
            raise ValueError(f"solver (deprecated alias of tracking) must be one of {TRACKINGS}, got {solver!r}")
        overrides.setdefault("tracking", solver)
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid ProjectionOptions fields: {list(_FIELDS)}")
    base = options if options is not None else ProjectionOptions()
    return dataclasses.replace(base, **overrides) if overrides else base
