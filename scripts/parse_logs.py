"""Turn ``main.py`` run logs into the paper's Table 1: CSVs, Markdown/LaTeX tables and figures.

Reads every ``*.txt`` log under ``--runs`` (docs/reproduction.md's layout and log lines; the
published logs of the original study use the same format) and writes into ``--out``:

- ``raw.csv``: one row per ``Epoch`` line (run, phase ``pretrain``/``sl``/``finetune``, epoch,
  accuracy, validation loss, learning rate);
- ``runs.csv``: one row per pruning run: ``dataset, model, method, speed_up``, ``paper`` (max
  accuracy over every epoch line, which is what the published tables report), ``best_pruned``
  (best accuracy after pruning: the headline; the epoch is picked by its test accuracy),
  ``last_pruned`` (the last fine-tuning epoch's: no epoch picked on the test split), ``one_shot`` (accuracy right after
  pruning, before fine-tuning), ``one_shot_bn`` (the same after ``--bn-recalibrate N``; NaN without
  it, as in the published logs), ``acc_before``, ``final_best`` (the log's ``Best Acc=``),
  parameters and FLOPs before/after, the speed-up reached, epoch counts, ``status``;
- ``pretrain.csv``: best accuracy of every pretraining log;
- ``table_<metric>.{csv,md,tex}``: methods (the paper's order and labels) against
  dataset-model-speed-up columns; in Markdown and LaTeX the best value of a column is bold and
  the second underlined;
- ``table_<dataset>-<model>-<speed_up>x.{csv,md}`` (printed): per setting, methods against
  ``best_pruned, paper, one_shot, one_shot_bn, speed-up reached``.
  Every table cell is the value of one run or, with several runs of a cell (seeds: ``scripts.grid
  --seeds``), ``mean [min, max]``; ranks and bold go by the mean;
- ``accuracy_vs_speedup.{png,pdf}`` (a dot plot with seed ranges when a panel has one speed-up) and
  ``finetune_curves.{png,pdf}`` (one setting, its lowest seed; ``one_shot``/``one_shot_bn`` marked);
- ``skipped.csv``: logs that were not used and why (truncated or still running, unreadable,
  unknown method or name, an impossible accuracy such as ``inf``/``nan``/above 1, epoch numbers
  repeating or going backwards: two runs interleaved in one log; a seed already counted from another log
  of the same experiment, as when a single-seed tree sits next to ``--seeds`` trees). A log where a run was re-run with
  other arguments gives its last run (``earlier_runs_in_log`` in ``runs.csv`` counts the others).
  Nothing here raises on a bad log; every file is written atomically.

Usage::

    python scripts/parse_logs.py [--runs run] [--out scripts/results] [--metric best_pruned]
        [--datasets digits,cifar10] [--scope global] [--curves digits-resnet20-2.0] [--quiet]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # python scripts/parse_logs.py: import engine from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import table1_layout as layout  # noqa: E402  (torch-free, like everything this module imports)
from engine.methods_table import METHOD_LABELS  # noqa: E402  (the tables' labels, in the paper's row order)
from engine.report import latex_escape  # noqa: E402

DATASET_LABELS = {"cifar10": "C10", "cifar100": "C100", "modelnet40": "MN40", "imagenet": "ImageNet",
                  "digits": "Digits"}
MODEL_LABELS = {"vgg19": "VGG19", "resnet56": "RN56", "mobilenetv2": "MNv2", "pointnet": "PointNet",
                "dgcnn": "DGCNN", "resnet50": "RN50", "resnet20": "RN20"}
# metric -> True when larger is better
METRICS: dict[str, bool] = {
    "best_pruned": True,
    "last_pruned": True,
    "paper": True,
    "one_shot": True,
    "one_shot_bn": True,
    "final_best": True,
    "acc_before": True,
    "speed_up_reached": True,
    "params_after": False,
    "flops_after": False,
}
ACCURACY_METRICS = {"best_pruned", "last_pruned", "paper", "one_shot", "one_shot_bn", "final_best", "acc_before"}
_UNIT = {"": 1.0, "K": 1e-3, "M": 1.0, "G": 1e3}  # -> millions


@dataclasses.dataclass
class EpochLine:
    """One ``Epoch i/n`` line of a log."""

    line: int
    epoch: int
    total: int
    acc: float
    val_loss: float
    lr: float
    phase: str = ""
    attempt: int = 0


@dataclasses.dataclass
class Change:
    """One ``<what>: before => after`` pruning line; ``kept``: the percentage it prints, if any."""

    before: float = math.nan
    after: float = math.nan
    kept: float = math.nan


@dataclasses.dataclass
class RunLog:
    """Everything a log says about one run (pretraining or pruning)."""

    path: Path
    kind: str  # "prune" or "pretrain"
    dataset: str
    model: str
    method: str = ""
    scope: str = ""
    speed_up: float = math.nan
    epochs: list[EpochLine] = dataclasses.field(default_factory=list)
    config: dict[str, str] = dataclasses.field(default_factory=dict)
    acc: Change = dataclasses.field(default_factory=Change)  # before pruning => right after (one shot)
    bn_acc: Change = dataclasses.field(default_factory=Change)  # ... => after --bn-recalibrate
    loss: Change = dataclasses.field(default_factory=Change)
    params: Change = dataclasses.field(default_factory=Change)  # millions
    flops: Change = dataclasses.field(default_factory=Change)  # millions
    speed_up_reached: float = math.nan
    final_best: float = math.nan
    earlier_runs: int = 0  # runs with other arguments earlier in the same log, replaced by this one

    @property
    def seed(self) -> str:
        """The run's ``--seed`` as logged ("" when the log does not say)."""
        value = self.config.get("seed", "")
        return "" if value in ("", "None") else value

    @property
    def complete(self) -> bool:
        return not math.isnan(self.final_best)

    @property
    def one_shot(self) -> float:
        """The accuracy right after pruning, before fine-tuning."""
        return self.acc.after

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def setting(self) -> tuple[str, str, float]:
        return (self.dataset, self.model, self.speed_up)

    def phase_accs(self, *phases: str) -> list[float]:
        return [e.acc for e in self.epochs if e.phase in phases and not math.isnan(e.acc)]

    def summary(self) -> dict:
        """The ``runs.csv`` row."""
        finetune = self.phase_accs("finetune")
        every = [e.acc for e in self.epochs if not math.isnan(e.acc)]
        return {
            "dataset": self.dataset, "model": self.model, "method": self.method,
            "label": METHOD_LABELS.get(self.method, self.method), "scope": self.scope, "speed_up": self.speed_up,
            "seed": self.seed, "status": "complete" if self.complete else "incomplete",
            "paper": max(every) if every else math.nan,
            "best_pruned": max(finetune) if finetune else math.nan,
            # the last fine-tuning epoch: no epoch picked by its test accuracy (best_pruned picks one)
            "last_pruned": finetune[-1] if finetune else math.nan,
            "one_shot": self.acc.after, "one_shot_bn": self.bn_acc.after, "acc_before": self.acc.before,
            "final_best": self.final_best,
            "params_before": self.params.before, "params_after": self.params.after,
            "params_kept_pct": self.params.kept, "flops_before": self.flops.before,
            "flops_after": self.flops.after, "flops_kept_pct": self.flops.kept,
            "speed_up_reached": self.speed_up_reached, "sl_epochs": len(self.phase_accs("sl")),
            "finetune_epochs": len(finetune), "earlier_runs_in_log": self.earlier_runs, "log": str(self.path),
        }


def _f(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _impossible(what: str, text: str, line: int) -> str | None:
    """The skip reason when an accuracy is not a finite number in [0, 1], else None."""
    value = _f(text)
    if math.isfinite(value) and 0.0 <= value <= 1.0:
        return None
    return f"impossible value {what}={text} at line {line} (accuracies are finite, in [0, 1])"


def identify(path: Path) -> tuple[str, dict] | str:
    """``(kind, fields)`` from a log's file name, or the reason it is not a run log."""
    match = layout.RUN_NAME_RE.match(path.stem)
    if match:
        fields = match.groupdict()
        return "prune", {**fields, "speed_up": float(fields["speed_up"])}
    match = layout.PRETRAIN_NAME_RE.match(path.stem)
    if match and path.parent.name == "pretrain":
        return "pretrain", match.groupdict()
    return f"file name {path.name!r} is not <dataset>-<scope>-<method>-<speed_up>-<model>.txt or a pretrain log"


# Arguments a resumed run may change (engine/table1.py's _RESUME_IGNORED): any other difference between two
# config blocks of one log means a second run (a completed run re-run with other arguments), not a resume.
RESTART_IGNORED = frozenset({"verbose", "workers", "restore", "sl_restore", "output_dir", "dataroot"})


class _Reader:
    """Reads a log's messages in order into a :class:`RunLog`; ``read`` returns a skip reason or None.

    A log may hold several attempts (the arguments logged again). The first body line after a config
    block decides what it was: the same arguments (but for ``RESTART_IGNORED``) continue the run (a
    restart or resume), other arguments start another run, which replaces everything read so far (the
    log's last run is its result; ``RunLog.earlier_runs`` counts the replaced ones); a block with no
    body after it (a refused attempt) is ignored. Epoch lines before the pruning lines of an attempt are
    sparsity learning, after them (or after a resumed fine-tuning) fine-tuning; an epoch a resumed
    attempt repeats replaces the interrupted attempt's line. The run is complete with a ``Best Acc=``
    after pruning in its last attempt.
    """

    def __init__(self, run: RunLog) -> None:
        self.run = run
        self.attempt, self.in_body, self.pruned_in_attempt, self.ever_pruned = 0, False, False, False
        self.previous_config: dict[str, str] | None = None  # the config before the block being read
        self.block_pending = False  # a config block was read after a body and no body line followed yet

    def _body(self) -> None:
        """A body line: the first one after a repeated config block says whether it is the same run."""
        if self.block_pending:
            self.block_pending = False
            if _other_arguments(self.previous_config or {}, self.run.config):
                self._another_run()
            else:
                self.attempt, self.pruned_in_attempt = self.attempt + 1, False
                self.run.final_best = math.nan
        self.in_body = True

    def _another_run(self) -> None:
        old = self.run
        self.run = RunLog(path=old.path, kind=old.kind, dataset=old.dataset, model=old.model, method=old.method,
                          scope=old.scope, speed_up=old.speed_up, config=old.config,
                          earlier_runs=old.earlier_runs + 1)
        self.attempt, self.pruned_in_attempt, self.ever_pruned = self.attempt + 1, False, False

    def _pruned(self) -> None:
        self._body()
        self.pruned_in_attempt = self.ever_pruned = True

    def finish(self) -> RunLog:
        """The run, once every line was read (a trailing config block without a body was a refused attempt)."""
        if self.block_pending and self.previous_config is not None:
            self.run.config = self.previous_config
        return self.run

    def read(self, number: int, msg: str) -> str | None:
        if match := layout.EPOCH_RE.match(msg):
            return _impossible("Acc", match[3], number) or self._epoch(number, match)
        if match := layout.PARAMS_RE.match(msg):
            self._pruned()
            self.run.params = _change(match)
        elif match := layout.FLOPS_RE.match(msg):
            self._pruned()
            self.run.flops, self.run.speed_up_reached = _change(match), _f(match[6])
        elif match := layout.ACC_RE.match(msg):
            if problem := (_impossible("Acc (before pruning)", match[1], number)
                           or _impossible("Acc (after pruning)", match[2], number)):
                return problem
            self._pruned()
            self.run.acc = Change(_f(match[1]), _f(match[2]))
        elif match := layout.BN_ACC_RE.match(msg):
            self._pruned()
            self.run.bn_acc = Change(_f(match[1]), _f(match[2]))
            return _impossible("BN Acc (after recalibration)", match[2], number)
        elif match := layout.LOSS_RE.match(msg):
            self._body()
            self.run.loss = Change(_f(match[1]), _f(match[2]))
        elif match := layout.BEST_RE.match(msg):
            return self._best(number, match[1])
        elif layout.RESUME_FINETUNE_RE.match(msg):
            self._pruned()
        elif match := layout.CONFIG_RE.match(msg):
            self._config(match[1], match[2])
        return None

    def _epoch(self, number: int, match: re.Match) -> str | None:
        self._body()
        run = self.run
        epoch = EpochLine(number, int(match[1]), int(match[2]), _f(match[3]), _f(match[4]), _f(match[5]))
        if run.kind == "pretrain":
            epoch.phase = "pretrain"
        elif self.pruned_in_attempt or (self.ever_pruned and self.attempt > 0 and _continues(run.epochs, epoch)):
            # after the prune lines; or a resumed fine-tuning that picks up where it stopped
            epoch.phase, self.pruned_in_attempt = "finetune", True
        else:
            epoch.phase = "sl"
        epoch.attempt = self.attempt
        same = [e for e in run.epochs if e.attempt == self.attempt and e.phase == epoch.phase]
        if same and epoch.epoch != same[-1].epoch + 1:
            return (f"interleaved or garbled: epoch {epoch.epoch} after epoch {same[-1].epoch} at line {number} "
                    f"(two runs writing one log?); rerun it into its own directory")
        # a resumed attempt repeats the epoch its predecessor logged but did not checkpoint: counted once
        run.epochs = [e for e in run.epochs
                      if not (e.phase == epoch.phase and e.attempt < self.attempt and e.epoch >= epoch.epoch)]
        run.epochs.append(epoch)
        return None

    def _best(self, number: int, text: str) -> str | None:
        if problem := _impossible("Best Acc", text, number):
            return problem
        self._body()
        # a sparsity-learning phase ends with its own "Best Acc=" before pruning: not the run's end
        if self.run.kind == "pretrain" or self.pruned_in_attempt:
            self.run.final_best = _f(text)
        return None

    def _config(self, key: str, value: str) -> None:
        if self.in_body:  # the arguments logged again: a restart, a resume, another run or a refused attempt
            self.previous_config, self.run.config = self.run.config, {}
            self.in_body, self.block_pending = False, True
        self.run.config[key] = value


def _other_arguments(before: dict[str, str], after: dict[str, str]) -> bool:
    """Whether two config blocks describe different runs (not a resume of one): an argument both name differs
    (one naming an argument the other does not is another version of main.py, not other arguments)."""
    keys = (set(before) & set(after)) - RESTART_IGNORED
    return any(before.get(key) != after.get(key) for key in keys)


def _change(match: re.Match) -> Change:
    """A Params/FLOPs line: before, after (millions) and the percentage kept."""
    return Change(_f(match[1]) * _UNIT[match[2]], _f(match[3]) * _UNIT[match[4]], _f(match[5]))


def parse_log(path: Path) -> RunLog | str:
    """Parse one log; returns the run, or the reason it cannot be used (never raises on content)."""
    found = identify(path)
    if isinstance(found, str):
        return found
    kind, fields = found
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"unreadable: {exc}"
    reader = _Reader(RunLog(path=path, kind=kind, **fields))
    for number, raw in enumerate(text.splitlines(), start=1):
        line = layout.LINE_RE.match(raw)
        if line is not None and (problem := reader.read(number, line.group("msg"))):
            return problem
    run = reader.finish()
    if not run.epochs and not reader.ever_pruned:
        return "no epoch or pruning lines (empty, not started, or not a main.py log)"
    if kind == "prune" and not reader.ever_pruned:
        run.final_best = math.nan  # cannot be finished without having pruned
    if math.isnan(run.speed_up_reached) and run.flops.after > 0:
        run.speed_up_reached = run.flops.before / run.flops.after
    return run


def run_finished(path: str | Path) -> bool:
    """The grid's done-check (``scripts/grid.py``): the log at ``path`` parses and its run is complete."""
    run = parse_log(Path(path))
    return not isinstance(run, str) and run.complete


def _continues(previous: list[EpochLine], epoch: EpochLine) -> bool:
    """A restarted attempt whose first epoch follows the last fine-tuning epoch (a resume)."""
    finetune = [e for e in previous if e.phase == "finetune"]
    return bool(finetune) and epoch.epoch > 0 and epoch.epoch <= finetune[-1].epoch + 1


# --------------------------------------------------------------------------- collection
def collect(runs_dir: Path, datasets: Sequence[str] | None, scope: str) -> tuple[list[RunLog], list[dict]]:
    """Parse every log under ``runs_dir``; returns (usable runs, skipped rows with reasons)."""
    runs: list[RunLog] = []
    skipped: list[dict] = []
    for path in sorted(runs_dir.rglob("*.txt")):
        result = parse_log(path)
        if isinstance(result, str):
            skipped.append({"log": str(path), "reason": result})
            continue
        if datasets and result.dataset not in datasets:
            continue
        if result.kind == "prune" and result.method not in METHOD_LABELS:
            skipped.append({"log": str(path), "reason": f"unknown method {result.method!r}"})
            continue
        if result.kind == "prune" and result.scope != scope:
            skipped.append({"log": str(path), "reason": f"scope {result.scope} (tables use {scope})"})
            continue
        if not result.complete:
            skipped.append({"log": str(path), "reason": "incomplete: no 'Best Acc=' line (truncated or running)"})
        runs.append(result)
    return runs, skipped


def drop_repeated_seeds(runs: Sequence[RunLog]) -> tuple[list[RunLog], list[dict]]:
    """One run per experiment and seed: ``(kept, skipped rows)``.

    The same seed of the same experiment found twice (a single-seed tree next to ``--seeds`` trees, or a
    copied folder) would count that seed twice in every ``mean [min, max]``. Runs agree on the kind, data
    set, model, method, scope, speed-up, seed and number of sparsity-learning and fine-tuning epochs; a
    complete one is kept before an incomplete one, then the first log path. Runs whose log names no seed
    (the original study's) are all kept: nothing says they repeat each other.
    """
    def key(run: RunLog) -> tuple:
        speed_up = None if math.isnan(run.speed_up) else run.speed_up  # NaN (pretraining) never equals itself
        return (run.kind, run.dataset, run.model, run.method, run.scope, speed_up, run.seed,
                len(run.phase_accs("sl")), len(run.phase_accs("finetune")))

    counted: dict[tuple, RunLog] = {}
    repeats: list[RunLog] = []
    skipped: list[dict] = []
    for run in sorted((r for r in runs if r.seed), key=lambda r: (not r.complete, str(r.path))):
        first = counted.setdefault(key(run), run)
        if first is not run:
            repeats.append(run)
            skipped.append({"log": str(run.path), "reason": f"seed {run.seed} of this run is already counted "
                                                            f"({first.path}): each seed counts once"})
    return [r for r in runs if not any(r is repeat for repeat in repeats)], skipped


def raw_rows(runs: Sequence[RunLog]) -> list[dict]:
    rows = []
    for run in runs:
        for e in run.epochs:
            rows.append({
                "run": run.name, "kind": run.kind, "dataset": run.dataset, "model": run.model, "method": run.method,
                "speed_up": run.speed_up, "attempt": e.attempt, "phase": e.phase, "epoch": e.epoch,
                "total_epochs": e.total, "acc": e.acc, "val_loss": e.val_loss, "lr": e.lr, "line": e.line,
            })
    return rows


def _rank(value: str, labels: dict) -> tuple[int, str]:
    """Sort key: the labels' order first, unknown names after them alphabetically."""
    known = list(labels)
    return (known.index(value) if value in known else len(known), value)


def _order(values: Sequence, labels: dict) -> list:
    return sorted(set(values), key=lambda v: _rank(v, labels))


def summary_table(rows: Sequence[dict], metric: str) -> tuple[list[tuple[str, str, float]], list[str], dict]:
    """(columns, methods, samples[(method, column)]) over complete runs, in the paper's order; a sample is
    the list of the metric's values over the runs (seeds) of that method and column."""
    complete = [r for r in rows if r["status"] == "complete" and not math.isnan(r[metric])]
    datasets = _order([r["dataset"] for r in complete], DATASET_LABELS)
    models = _order([r["model"] for r in complete], MODEL_LABELS)
    columns = sorted({(r["dataset"], r["model"], r["speed_up"]) for r in complete},
                     key=lambda c: (datasets.index(c[0]), models.index(c[1]), c[2]))
    methods = [m for m in METHOD_LABELS if any(r["method"] == m for r in complete)]
    samples: dict[tuple[str, tuple], list[float]] = {}
    for r in complete:
        samples.setdefault((r["method"], (r["dataset"], r["model"], r["speed_up"])), []).append(r[metric])
    return columns, methods, samples


def means(samples: dict) -> dict:
    """The mean of every sample of :func:`summary_table`."""
    return {key: sum(values) / len(values) for key, values in samples.items()}


def column_label(column: tuple[str, str, float], times: str = "×") -> str:
    dataset, model, speed_up = column
    return f"{DATASET_LABELS.get(dataset, dataset)} {MODEL_LABELS.get(model, model)} {speed_up:g}{times}"


def ranks(values: dict, methods: Sequence[str], column: tuple, higher_is_better: bool) -> dict[str, int]:
    """Per method: 1 for the best value of the column, 2 for the second (ties share), else 0."""
    present = sorted({round(values[(m, column)], 10) for m in methods if (m, column) in values},
                     reverse=higher_is_better)
    out = {}
    for method in methods:
        if (method, column) in values:
            position = present.index(round(values[(method, column)], 10)) + 1
            out[method] = position if position <= 2 else 0
    return out


def format_value(value: float, metric: str) -> str:
    if metric in ACCURACY_METRICS:
        text = f"{value:.4f}"
        return text[1:] if text.startswith("0.") else text  # the paper's ".9388"
    if metric == "speed_up_reached":
        return f"{value:.2f}×"
    return f"{value:.2f}"


def format_cell(values: Sequence[float], metric: str, wrap: str = "{}") -> str:
    """One run: its value; several (seeds): ``mean [min, max]``; ``wrap`` formats the mean (bold, ...)."""
    mean = wrap.format(format_value(sum(values) / len(values), metric))
    if len(values) == 1:
        return mean
    return f"{mean} [{format_value(min(values), metric)}, {format_value(max(values), metric)}]"


def _tex_column(column: tuple[str, str, float]) -> str:
    return latex_escape(column_label(column, "@")).replace("@", "$\\times$")


def render_tables(rows: Sequence[dict], metric: str) -> tuple[list[dict], str, str]:
    """The summary table as CSV rows (mean, min, max and number of runs per column), Markdown and LaTeX
    (``mean [min, max]`` over seeds; best and second mean marked)."""
    columns, methods, samples = summary_table(rows, metric)
    values = means(samples)
    higher = METRICS[metric]
    rank = {c: ranks(values, methods, c, higher) for c in columns}
    csv_rows = []
    for method in methods:
        row = {"method": METHOD_LABELS[method]}
        for c in columns:
            sample = samples.get((method, c), [])
            label = column_label(c, "x")
            row[label] = values.get((method, c), "")
            row[f"{label} min"], row[f"{label} max"] = (min(sample), max(sample)) if sample else ("", "")
            row[f"{label} runs"] = len(sample)
        csv_rows.append(row)
    md = ["| method | " + " | ".join(column_label(c) for c in columns) + " |",
          "|---|" + "---|" * len(columns)]
    tex = [f"% {metric}: best bold, second underlined (needs \\usepackage{{booktabs}})",
           "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\toprule",
           "Method & " + " & ".join(_tex_column(c) for c in columns) + " \\\\", "\\midrule"]
    for method in methods:
        md_cells, tex_cells = [], []
        for c in columns:
            if (method, c) not in samples:
                md_cells.append("–")
                tex_cells.append("--")
                continue
            position = rank[c].get(method, 0)
            md_cells.append(format_cell(samples[(method, c)], metric,
                                        {1: "**{}**", 2: "<ins>{}</ins>"}.get(position, "{}")))
            tex_cells.append(format_cell(samples[(method, c)], metric,
                                         {1: "\\textbf{{{}}}", 2: "\\underline{{{}}}"}.get(position, "{}")))
        md.append(f"| {METHOD_LABELS[method]} | " + " | ".join(md_cells) + " |")
        tex.append(f"{latex_escape(METHOD_LABELS[method])} & " + " & ".join(tex_cells) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}"]
    return csv_rows, "\n".join(md) + "\n", "\n".join(tex) + "\n"


# the per-setting table scripts/digits.sh prints (and the docs show): methods against these metrics
SETTING_METRICS = ("best_pruned", "paper", "one_shot", "one_shot_bn", "speed_up_reached")
SETTING_HEADERS = ("best_pruned", "paper", "one_shot", "one_shot_bn", "speed-up reached")


def setting_table(rows: Sequence[dict], setting: tuple[str, str, float]) -> tuple[list[dict], str]:
    """One setting (data set, model, speed-up): methods (their labels) against ``SETTING_METRICS``, each
    cell ``mean [min, max]`` over the complete runs (seeds), the best mean of an accuracy column bold.
    Returns (CSV rows with mean/min/max/runs per metric, Markdown)."""
    chosen = [r for r in rows if (r["dataset"], r["model"], r["speed_up"]) == setting]
    tables = {metric: summary_table(chosen, metric) for metric in SETTING_METRICS}
    methods = [m for m in METHOD_LABELS if any(m in table[1] for table in tables.values())]
    best = {metric: max(means(tables[metric][2]).values(), default=math.nan) for metric in ACCURACY_METRICS
            if metric in tables}
    csv_rows, md = [], ["| method | " + " | ".join(SETTING_HEADERS) + " |", "|---|" + "---|" * len(SETTING_HEADERS)]
    for method in methods:
        row: dict = {"method": METHOD_LABELS[method]}
        cells = []
        for metric in SETTING_METRICS:
            sample = tables[metric][2].get((method, setting), [])
            if not sample:
                cells.append("–")
                row.update({metric: "", f"{metric} min": "", f"{metric} max": "", f"{metric} runs": 0})
                continue
            mean = sum(sample) / len(sample)
            bold = metric in best and round(mean, 10) == round(best[metric], 10)
            cells.append(format_cell(sample, metric, "**{}**" if bold else "{}"))
            row.update({metric: mean, f"{metric} min": min(sample), f"{metric} max": max(sample),
                        f"{metric} runs": len(sample)})
        csv_rows.append(row)
        md.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    return csv_rows, "\n".join(md) + "\n"


def setting_caption(rows: Sequence[dict], pretrain: Sequence[dict], setting: tuple[str, str, float]) -> str:
    """What a setting table averages over: seeds, runs per cell, the unpruned accuracy."""
    dataset, model, _ = setting
    chosen = [r for r in rows if (r["dataset"], r["model"], r["speed_up"]) == setting and r["status"] == "complete"]
    seeds = sorted({r["seed"] for r in chosen}, key=lambda s: (len(s), s))
    counts = sorted({sum(1 for r in chosen if r["method"] == m) for m in {r["method"] for r in chosen}})
    base = [r["best"] for r in pretrain if (r["dataset"], r["model"]) == setting[:2] and r["status"] == "complete"
            and not math.isnan(r["best"])]
    text = f"{column_label(setting)}: "
    text += (f"mean [min, max] over seeds {', '.join(s or '?' for s in seeds)}" if len(chosen) > len(
        {r["method"] for r in chosen}) else f"seed {seeds[0] or '?'}" if seeds else "no complete run")
    if len(counts) > 1:
        text += f" (runs per method: {min(counts)}-{max(counts)})"
    if base:
        text += f"; unpruned {format_cell(base, 'acc_before')}"
    return text


# --------------------------------------------------------------------------- figures
# one colour and one marker per method: no two rows of a legend look alike (14 methods today)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan", "black", "gold", "navy", "magenta", "teal", "lime")
_MARKERS = "os^vD<>pPX*hdH8x"


def method_style(method: str) -> dict:
    """The same colour and marker for a method in every figure."""
    index = list(METHOD_LABELS).index(method) % len(_COLORS)
    return {"color": _COLORS[index], "marker": _MARKERS[index], "label": METHOD_LABELS[method]}


# axis labels of the figures: what each accuracy is, then its column name
METRIC_AXIS_LABELS = {
    "best_pruned": "accuracy after pruning + fine-tuning (best_pruned)",
    "last_pruned": "accuracy after pruning + fine-tuning, last epoch (last_pruned)",
    "paper": "max accuracy over every epoch, as published (paper)",
    "one_shot": "accuracy right after pruning (one_shot)",
    "one_shot_bn": "accuracy after pruning + BatchNorm re-estimation (one_shot_bn)",
    "final_best": "best accuracy the log reports (final_best)",
    "acc_before": "accuracy before pruning (acc_before)",
    "speed_up_reached": "FLOPs speed-up reached",
    "params_after": "parameters after pruning (M)",
    "flops_after": "FLOPs after pruning (M)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _spread(sample: Sequence[float]) -> tuple[float, float, float]:
    """(mean, mean - min, max - mean): a point and its error bar over seeds."""
    mean = sum(sample) / len(sample)
    return mean, mean - min(sample), max(sample) - mean


def speedup_figure(rows: Sequence[dict], metric: str):
    """One panel per data set and model. A panel with one speed-up setting is a dot plot: one row per
    method, its mean ``metric`` with the seeds' [min, max] as an error bar; with several settings,
    ``metric`` against the speed-up reached, one line per method (error bars likewise). None: no data."""
    columns, methods, samples = summary_table(rows, metric)
    panels = list(dict.fromkeys((c[0], c[1]) for c in columns))
    if not panels:
        return None
    plt = _pyplot()
    reached = summary_table(rows, "speed_up_reached")[2]
    dots = {panel: len([c for c in columns if c[:2] == panel]) == 1 for panel in panels}
    height = max(3.4, 0.32 * len(methods) + 1.2) if any(dots.values()) else 3.4
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 3.0, height), squeeze=False)
    label = METRIC_AXIS_LABELS.get(metric, metric)
    for ax, panel in zip(axes[0], panels):
        title = f"{DATASET_LABELS.get(panel[0], panel[0])} {MODEL_LABELS.get(panel[1], panel[1])}"
        if dots[panel]:
            (column,) = [c for c in columns if c[:2] == panel]
            shown = [m for m in methods if (m, column) in samples]
            for row, method in enumerate(shown):
                mean, below, above = _spread(samples[(method, column)])
                style = method_style(method)
                ax.errorbar([mean], [row], xerr=[[below], [above]], capsize=3, linestyle="none",
                            color=style["color"], marker=style["marker"], label=style["label"])
            ax.set_yticks(range(len(shown)), [METHOD_LABELS[m] for m in shown])
            ax.invert_yaxis()  # the table's order, top to bottom
            ax.set_xlabel(label)
            runs = max(len(samples[(m, column)]) for m in shown)
            title += f" {column[2]:g}× (mean, bars: min-max over {runs} seeds)" if runs > 1 else f" {column[2]:g}×"
        else:
            for method in methods:
                points = []
                for c in columns:
                    if c[:2] == panel and (method, c) in samples:
                        x = _spread(reached[(method, c)])[0] if (method, c) in reached else c[2]
                        points.append((x, *_spread(samples[(method, c)])))
                if points:
                    xs, ys, below, above = zip(*sorted(points))
                    ax.errorbar(xs, ys, yerr=[below, above], capsize=3, **method_style(method))
            ax.set_xlabel("FLOPs speed-up reached")
            ax.set_ylabel(label)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_speedup(rows: Sequence[dict], metric: str, stem: Path) -> list[Path]:
    """:func:`speedup_figure` written as ``stem.png`` and ``stem.pdf``."""
    from engine.harness import save_figure

    fig = speedup_figure(rows, metric)
    if fig is None:
        return []
    paths = save_figure(fig, stem)
    _pyplot().close(fig)
    return paths


def curves_figure(runs: Sequence[RunLog], setting: tuple[str, str, float]):
    """Accuracy per epoch of every method of one setting (its lowest seed): the sparsity-learning phase at
    negative epochs, right after pruning at 0 (``one_shot``, an open marker), after the BatchNorm
    re-estimation also at 0 (``one_shot_bn``, a star) and fine-tuning from 1. None: no complete run."""
    complete = [r for r in runs if r.kind == "prune" and r.setting == setting and r.complete]
    if not complete:
        return None
    seed = min((r.seed for r in complete), key=lambda s: (len(s), s))
    chosen = sorted((r for r in complete if r.seed == seed), key=lambda r: list(METHOD_LABELS).index(r.method))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for run in chosen:
        style = method_style(run.method)
        sl, finetune = run.phase_accs("sl"), run.phase_accs("finetune")
        start = [run.bn_acc.after] if not math.isnan(run.bn_acc.after) else (
            [run.one_shot] if not math.isnan(run.one_shot) else [])
        xs = list(range(-len(sl), 0)) + [0] * len(start) + list(range(1, len(finetune) + 1))
        ax.plot(xs, sl + start + finetune, markersize=4, **style)
        if not math.isnan(run.one_shot):  # fine-tuning starts from the recalibrated network when there is one
            ax.plot([0], [run.one_shot], linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                    markeredgecolor=style["color"], gid="one_shot")
        if not math.isnan(run.bn_acc.after):
            ax.plot([0], [run.bn_acc.after], linestyle="none", marker="*", markersize=9, color=style["color"],
                    gid="one_shot_bn")
    ax.plot([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="black",
            label="one_shot: right after pruning")
    ax.plot([], [], linestyle="none", marker="*", color="black", label="one_shot_bn: after BatchNorm re-estimation")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("epoch (< 0: sparsity learning; 0: pruned; > 0: fine-tuning)")
    ax.set_ylabel("top-1 accuracy (test split)")
    ax.set_title(f"{column_label(setting)}: fine-tuning curves" + (f" (seed {seed})" if seed else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def plot_curves(runs: Sequence[RunLog], setting: tuple[str, str, float], stem: Path) -> list[Path]:
    """:func:`curves_figure` written as ``stem.png`` and ``stem.pdf``."""
    from engine.harness import save_figure

    fig = curves_figure(runs, setting)
    if fig is None:
        return []
    paths = save_figure(fig, stem)
    _pyplot().close(fig)
    return paths


def parse_setting(text: str) -> tuple[str, str, float]:
    """``digits-resnet20-2.0`` -> ("digits", "resnet20", 2.0)."""
    parts = text.rsplit("-", 2)
    if len(parts) != 3:
        raise ValueError(f"--curves {text!r}: expected <dataset>-<model>-<speed_up>, e.g. cifar10-resnet56-2.0")
    try:
        return parts[0], parts[1], float(parts[2])
    except ValueError as exc:
        raise ValueError(f"--curves {text!r}: the speed-up must be a number") from exc


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild Table 1 from main.py run logs.")
    parser.add_argument("--runs", default="run", help="run tree to read (default: run)")
    parser.add_argument("--out", default="scripts/results", help="output folder (default: scripts/results)")
    parser.add_argument("--metric", default="best_pruned",
                        help=f"table metric(s), comma-separated, from: {', '.join(METRICS)}")
    parser.add_argument("--datasets", default=None, help="comma list of data sets to keep (default: all)")
    parser.add_argument("--scope", default="global", choices=("global", "local"), help="runs used in tables")
    parser.add_argument("--curves", default=None, help="setting of the curve figure, e.g. digits-resnet20-2.0 "
                        "(default: the setting with the most runs)")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metric.split(",") if m]
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    curves = parse_setting(args.curves) if args.curves else None
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"--runs {runs_dir}: no such folder (expected the run tree main.py writes)")
    datasets = [d for d in (args.datasets or "").split(",") if d]
    out = Path(args.out)
    blocking = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"--out {out}: {blocking} is a file, not a folder (expected a folder for the tables)")

    from engine.harness import atomic_write_csv, atomic_write_text  # (the harness imports torch)

    runs, skipped = collect(runs_dir, datasets, args.scope)
    runs, repeated = drop_repeated_seeds(runs)
    skipped += repeated
    method_order = list(METHOD_LABELS)
    pruning = sorted((r for r in runs if r.kind == "prune"), key=lambda r: (
        _rank(r.dataset, DATASET_LABELS), _rank(r.model, MODEL_LABELS), method_order.index(r.method), r.speed_up))
    rows = [r.summary() for r in pruning]
    atomic_write_csv(out / "raw.csv", raw_rows(runs), fieldnames=list(
        ["run", "kind", "dataset", "model", "method", "speed_up", "attempt", "phase", "epoch", "total_epochs",
         "acc", "val_loss", "lr", "line"]))
    atomic_write_csv(out / "runs.csv", rows, fieldnames=list(RunLog(Path("x"), "prune", "", "").summary()))
    pretrain = [{"dataset": r.dataset, "model": r.model, "seed": r.seed,
                 "status": "complete" if r.complete else "incomplete",
                 "best": max(r.phase_accs("pretrain"), default=math.nan), "epochs": len(r.epochs), "log": str(r.path)}
                for r in runs if r.kind == "pretrain"]
    atomic_write_csv(out / "pretrain.csv", pretrain,
                     fieldnames=["dataset", "model", "seed", "status", "best", "epochs", "log"])
    atomic_write_csv(out / "skipped.csv", skipped, fieldnames=["log", "reason"])
    for item in skipped:
        print(f"skipped {item['log']}: {item['reason']}", file=sys.stderr)

    for metric in metrics:
        csv_rows, markdown, latex = render_tables(rows, metric)
        atomic_write_csv(out / f"table_{metric}.csv", csv_rows,
                         fieldnames=list(csv_rows[0]) if csv_rows else ["method"])
        atomic_write_text(out / f"table_{metric}.md", markdown)
        atomic_write_text(out / f"table_{metric}.tex", latex)
    # what a person reads: per setting, methods against every accuracy (the docs' table shape)
    for setting in sorted({(r["dataset"], r["model"], r["speed_up"]) for r in rows if r["status"] == "complete"},
                          key=lambda c: (_rank(c[0], DATASET_LABELS), _rank(c[1], MODEL_LABELS), c[2])):
        csv_rows, markdown = setting_table(rows, setting)
        stem = out / f"table_{setting[0]}-{setting[1]}-{setting[2]:g}x"
        atomic_write_csv(stem.with_suffix(".csv"), csv_rows, fieldnames=list(csv_rows[0]) if csv_rows else ["method"])
        caption = setting_caption(rows, pretrain, setting)
        atomic_write_text(stem.with_suffix(".md"), f"{caption}\n\n{markdown}")
        if not args.quiet:
            print(f"\n{caption}; complete runs, best mean bold ({stem.name}.md):\n\n{markdown}")
    plot_speedup(rows, metrics[0], out / "accuracy_vs_speedup")
    complete = [r for r in pruning if r.complete]
    if curves is None and complete:
        counts: dict[tuple, int] = {}
        for run in complete:
            counts[run.setting] = counts.get(run.setting, 0) + 1
        curves = max(counts, key=lambda s: (counts[s], -list(counts).index(s)))
    if curves is not None:
        plot_curves(pruning, curves, out / "finetune_curves")
    done = sum(1 for r in rows if r["status"] == "complete")
    print(f"{done} complete pruning run(s), {len(rows) - done} incomplete, {len(skipped)} log(s) skipped; "
          f"outputs in {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from engine.harness import run_cli

    run_cli(lambda: sys.exit(main()), prog="parse_logs")
