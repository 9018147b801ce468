"""The Table 1 pruning methods as data: one row per method, torch-free.

``engine/registry.py`` adds each row's Torch-Pruning importance and builds its pruner from the
row's ``pruner`` kind; ``scripts/grid.py`` expands the ``in_grid`` rows into runs and
``scripts/parse_logs.py`` labels and orders the tables by ``table_row``. Adding a method is one
row here plus its importance in ``engine/registry.py`` (and a pruner kind there if it needs a
new one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodRow:
    """One Table 1 method.

    Attributes:
        name: the ``--method`` name.
        label: its row label in the tables (says what differs: ``Projective-SL`` adds sparsity learning).
        sparsity_learning: trains with the pruner's regulariser (``--reg``) before pruning.
        pruner: the pruner kind ``engine.registry.PRUNERS`` builds (``magnitude``, ``bn_scale``,
            ``group_norm``, ``growing_reg``, ``compensating``).
        table_row: position in the results table: the paper's nine rows first, in its order, then ours.
        in_paper: a row of the published Table 1.
        in_grid: run by default by every plan of ``scripts/grid.py`` (a plan may add more).
        calibrated: reads calibration batches (training images) while it prunes (``--calib-size``).
    """

    name: str
    label: str
    sparsity_learning: bool
    pruner: str
    table_row: int
    in_paper: bool = True
    in_grid: bool = True
    calibrated: bool = False


# In the grid's order (the order runs are launched in).
METHOD_TABLE: tuple[MethodRow, ...] = (
    MethodRow("random", "Random", False, "magnitude", 1),
    MethodRow("l1", "L1", False, "magnitude", 10, in_paper=False),
    MethodRow("l2", "MagnitudeL2", False, "magnitude", 2),
    MethodRow("fpgm", "FPGM", False, "magnitude", 4),
    MethodRow("obdc", "EigenDamage", False, "magnitude", 5),
    MethodRow("lamp", "LAMP", False, "magnitude", 6),
    MethodRow("slim", "Slimming", True, "bn_scale", 3),
    MethodRow("group_norm", "DepGraph", False, "group_norm", 7),
    MethodRow("group_sl", "DepGraph-SL", True, "group_norm", 8),
    MethodRow("proj", "Projective", False, "magnitude", 11, in_paper=False),
    MethodRow("proj_sl", "Projective-SL", True, "group_norm", 9),
    MethodRow("growing_reg", "GrowingReg", True, "growing_reg", 12, in_paper=False, in_grid=False),
    # Beyond the paper (docs/algorithm.md §8.1): removed channels folded into every consumer.
    MethodRow("proj_comp", "Projective + compensation, data-free", False, "compensating", 13, in_paper=False,
              in_grid=False),
    MethodRow("proj_calib", "Projective + compensation, calibrated", False, "compensating", 14, in_paper=False,
              in_grid=False, calibrated=True),
)

METHOD_ROWS: dict[str, MethodRow] = {row.name: row for row in METHOD_TABLE}
# The grid of Table 1: the paper's nine rows plus l1 and proj (growing_reg only on request; the digits
# plan adds proj_comp and proj_calib).
GRID_METHODS: tuple[str, ...] = tuple(row.name for row in METHOD_TABLE if row.in_grid)
# Every method in the results table's order.
TABLE_ORDER: tuple[str, ...] = tuple(row.name for row in sorted(METHOD_TABLE, key=lambda r: r.table_row))
METHOD_LABELS: dict[str, str] = {name: METHOD_ROWS[name].label for name in TABLE_ORDER}


def method_row(name: str) -> MethodRow:
    """The row of ``name``; unknown names raise a ``ValueError`` listing the valid ones."""
    if name not in METHOD_ROWS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHOD_ROWS))}")
    return METHOD_ROWS[name]
