"""Regenerate the result tables of docs/results.md from the commands that produce them.

    python -m benchmarks.readme [--sections demo,vit] [--results docs/results.md] [--output-dir run/readme] [--check]

Each regenerated section of docs/results.md sits between ``<!-- results:NAME:begin -->`` and
``<!-- results:NAME:end -->`` and is rewritten with what the command prints now, so the document
never drifts from the code (other ``results:`` sections, e.g. the digits tables, come from their own
scripts and are left alone):

- ``demo``: ``python -m engine.demo`` with its defaults (seed 1);
- ``vit``: ``python -m vit.main --model small --experiment uniform --amounts 64,100,131`` for the
  table's methods (the digits ViT is trained once into ``--output-dir`` and reused).

Numbers are reproducible on the same machine and thread count; prune times vary with the load.
``--check`` writes nothing and exits 1 when the file differs (e.g. in CI after a behaviour change).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/readme.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import atomic_write_text, plain_text, read_csv, run_cli, split_list, wrote  # noqa: E402
from engine.report import markdown_table  # noqa: E402

VIT_AMOUNTS = (64, 100, 131)
VIT_METHODS = {  # table label of each digits ViT method, in the table's order
    "calib": "calib (ours, on activations)",
    "act_norm": "act_norm (data-aware baseline)",
    "exact_oac": "exact_oac (ours, data-free)",
    "l2": "l2",
    "proj550": "proj550 (paper)",
}


def _fraction(value: float, digits: int) -> str:
    """``.9778`` (the paper's style: no leading zero)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("0.") else text


def _bold_best(column: Sequence[float], digits: int) -> list[str]:
    """Formatted cells, the best value(s) (after rounding) in bold."""
    cells = [_fraction(v, digits) for v in column]
    best = max(cells, key=float)
    return [f"**{c}**" if c == best else c for c in cells]


def demo_section(output_dir: Path) -> str:
    """The embedded demo's table (every ``PAIR_METHODS`` method, 50 % removed)."""
    import projprune as pp
    from engine.demo import DemoConfig, run

    cfg = DemoConfig(methods=",".join(pp.PAIR_METHODS), output_dir=str(output_dir / "demo"))
    rows = run(cfg)
    accuracy = _bold_best([r["acc_after"] for r in rows], 4)
    cells = [[r["method"], acc, _fraction(r["seconds"], 3)] for r, acc in zip(rows, accuracy)]
    head = (f"Accuracy before: {_fraction(rows[0]['acc_before'], 4)}; {rows[0]['params']:,} parameters after "
            f"({datetime.date.today().isoformat()}, seed {cfg.seed}):\n\n")
    return head + markdown_table(cells, columns=["method", "accuracy after", "prune time (s)"])


def vit_section(output_dir: Path) -> str:
    """Digits ViT, uniform: top-1 per removed units per layer for :data:`VIT_METHODS`."""
    from vit.main import main as vit_main

    amounts = ",".join(map(str, VIT_AMOUNTS))
    top1: dict[str, list[float]] = {}
    for method in VIT_METHODS:
        run = vit_main(["--model", "small", "--experiment", "uniform", "--method", method, "--amounts", amounts,
                        "--calib-size", "256", "--output-dir", str(output_dir), "--seed", "1"])
        rows = read_csv(Path(run) / f"{Path(run).name}.csv")
        by_amount = {int(r["amount"]): float(r["top1"]) for r in rows}
        top1[method] = [by_amount[a] for a in VIT_AMOUNTS]
    columns = [_bold_best([top1[m][i] for m in VIT_METHODS], 3) for i in range(len(VIT_AMOUNTS))]
    cells = [[label, *(columns[i][row] for i in range(len(VIT_AMOUNTS)))]
             for row, label in enumerate(VIT_METHODS.values())]
    header = ["removed per layer", *map(str, VIT_AMOUNTS[:-1]), f"{VIT_AMOUNTS[-1]} (51 %)"]
    return markdown_table(cells, columns=header)


SECTIONS: dict[str, Callable[[Path], str]] = {"demo": demo_section, "vit": vit_section}


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``name``'s markers replaced by ``body``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"--results: expected one {begin} ... {end} block for section {name!r}")
    return pattern.sub(lambda _: f"{begin}\n{body.rstrip()}\n{end}", text)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--results", default="docs/results.md", help="the file whose marked sections are rewritten")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    parser.add_argument("--output-dir", default="run/readme", help="where the commands write their runs")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file would change")
    args = parser.parse_args(argv)
    sections = split_list(args.sections, unique=True)
    if not sections or any(s not in SECTIONS for s in sections):
        raise ValueError(f"--sections: expected a comma-separated subset of {list(SECTIONS)}, got {args.sections!r}")
    results = Path(args.results)
    if not results.is_file():
        raise FileNotFoundError(f"--results: {results} does not exist")
    old = results.read_text(encoding="utf-8")
    for name in sections:
        replace_section(old, name, "")  # every marker checked before anything runs
    bodies = {name: SECTIONS[name](Path(args.output_dir)) for name in sections}
    new = old
    for name, body in bodies.items():
        new = replace_section(new, name, body)
    if args.check:
        if new != old:
            print(f"{results}: sections {sections} differ from what the commands print", file=sys.stderr)
            raise SystemExit(1)
    elif new != old:
        atomic_write_text(results, new)
    for name, body in bodies.items():
        print(f"## {name}\n\n{body}")
    if not args.check:
        wrote(*([results] if new != old else []), args.output_dir)
    return new


if __name__ == "__main__":
    run_cli(main, "python -m benchmarks.readme")
