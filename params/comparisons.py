"""The named comparisons of the analysis: groups of variants, one figure each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.harness import split_list

SWEEP_VALUES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the paper's alpha = beta and gamma grids


LAMBDA_VALUES = (0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0)  # the paper's lambda grid


@dataclass(frozen=True)
class Variant:
    """One pruning configuration: a core ``PAIR_METHODS`` name, keyword overrides and a mode.

    ``mode="layer"`` prunes each hidden layer by itself to the stage's width (``prune_pair``);
    ``mode="global"`` removes the same total number of units, chosen across the three layers by the
    core's per-layer-normalised global selection (``prune_pairs``).
    """

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()
    mode: str = "layer"
    may_fail: bool = False  # λ = 0: a singular Gram matrix is a recorded failure, not a crash
    scope: str = "linear"  # which layers the model's ``prunable_pairs(scope)`` returns

    @property
    def key(self) -> str:
        """A stable identity (shared between comparisons, so each variant is computed once)."""
        return json.dumps([self.method, sorted(self.overrides), self.mode, self.scope])


@dataclass(frozen=True)
class Comparison:
    """A group of variants drawn in one figure, with the paired tests ``(variant, reference)``."""

    name: str
    title: str
    variants: tuple[Variant, ...]
    tests: tuple[tuple[str, str], ...]

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)


def _against(variants: Sequence[Variant], reference: str) -> tuple[tuple[str, str], ...]:
    return tuple((v.label, reference) for v in variants if v.label != reference)


def _methods() -> Comparison:
    from projprune import PAIR_METHODS

    variants = tuple(Variant(name, name) for name in PAIR_METHODS)
    return Comparison("methods", "Methods (each layer pruned by itself)", variants, _against(variants, "l2"))


def _alpha_beta() -> Comparison:
    variants = tuple(Variant(f"alpha=beta={a:g}", "proj000", (("alpha", a), ("beta", a))) for a in SWEEP_VALUES)
    return Comparison("alpha_beta", "alpha = beta sweep (gamma = 0)", variants, _against(variants, "alpha=beta=0"))


def _gamma() -> Comparison:
    variants = tuple(Variant(f"gamma={g:g}", "proj550", (("gamma", g),)) for g in SWEEP_VALUES)
    return Comparison("gamma", "gamma sweep (alpha = beta = 0.5)", variants, _against(variants, "gamma=0"))


def _lambda() -> Comparison:
    variants = tuple(
        Variant(f"lambda={lm:g}", "proj550", (("lmbda", lm),), may_fail=lm == 0.0) for lm in LAMBDA_VALUES
    )
    return Comparison("lambda", "lambda sweep (alpha = beta = 0.5, gamma = 0)", variants,
                      _against(variants, "lambda=0.001"))


def _decay() -> Comparison:
    variants, tests = [], []
    for method in ("proj550", "proj555", "exact"):
        on = Variant(f"{method} decay", method, (("decay", True),))
        off = Variant(f"{method} no decay", method, (("decay", False),))
        variants += [on, off]
        tests.append((off.label, on.label))
    return Comparison("decay", "Linear decay of the redistribution on / off", tuple(variants), tuple(tests))


def _mode() -> Comparison:
    variants, tests = [], []
    for method in ("l2", "proj000", "proj550", "proj555", "exact", "exact_oac"):
        layer = Variant(f"{method} layer", method, mode="layer")
        glob = Variant(f"{method} global", method, mode="global")
        variants += [layer, glob]
        tests.append((glob.label, layer.label))
    return Comparison("mode", "Single-layer vs global selection", tuple(variants), tuple(tests))


_COMPARISON_FACTORIES = {
    "methods": _methods,
    "alpha_beta": _alpha_beta,
    "gamma": _gamma,
    "lambda": _lambda,
    "decay": _decay,
    "mode": _mode,
}


COMPARISONS: tuple[str, ...] = tuple(_COMPARISON_FACTORIES)


def parse_comparisons(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of :data:`COMPARISONS` keys (order kept, duplicates dropped)."""
    if text.strip() == "all":
        return list(COMPARISONS)
    names = split_list(text, unique=True)
    unknown = [name for name in names if name not in COMPARISONS]
    if unknown or not names:
        raise ValueError(
            f"--comparisons must be 'all' or a comma-separated subset of {list(COMPARISONS)}, got {text!r}"
        )
    return names


def build_comparison(name: str) -> Comparison:
    """The :class:`Comparison` called ``name`` (a key of :data:`COMPARISONS`)."""
    if name not in _COMPARISON_FACTORIES:
        raise ValueError(f"unknown comparison {name!r}; known: {list(COMPARISONS)}")
    return _COMPARISON_FACTORIES[name]()
