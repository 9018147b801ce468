"""Benchmark: attention-head pruning methods on the real all-MiniLM-L6-v2 (6 layers x 12 heads), offline.

Same model, texts and metric as ``benchmarks/real_minilm.py`` (whose helpers this reuses):
calibration sentences from standard-library docstrings, held-out evaluation sentences from
``pydoc_data.topics``, mean cosine of mean-pooled sentence embeddings to the unpruned model.
``--validation-sentences N`` instead scores on the N docstring sentences after the calibration
ones (for choosing ``calib``'s λ; the evaluation text is then never read).

    python benchmarks/minilm_heads.py --threads 2
    python benchmarks/minilm_heads.py --validation-sentences 200 --lambdas 1e-3,1e-2,1e-1,3e-1
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python benchmarks/minilm_heads.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_minilm import batches, calibration_sentences, embed, evaluation_sentences, load_minilm  # noqa: E402
from engine.harness import plain_text, run_cli, split_list  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch

METHODS = ("random", "l2", "flap", "act_norm", "calib", "calib/compensate=False")


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"calib/compensate=False/lmbda=0.1"`` -> ``("calib", {"compensate": False, "lmbda": 0.1})``."""
    import ast

    name, *pairs = spec.split("/")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key.strip()] = ast.literal_eval(value.strip())
    return name.strip(), options


def run_heads(method: str, ratio: float, global_mode: bool, model, reference: torch.Tensor, calib, evaluation,
              **options: Any) -> dict[str, Any]:
    """Prune a copy of ``model``'s heads and compare its sentence embeddings with ``reference``."""
    import torch

    from projprune.transformers import CALIBRATED_HEAD_METHODS, prune_heads

    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    report = prune_heads(pruned, ratio, method, calib if method in CALIBRATED_HEAD_METHODS else None,
                         global_mode=global_mode, **options)
    seconds = time.perf_counter() - start
    cosine = (embed(pruned, evaluation) * reference).sum(-1)
    heads = report.widths
    label = method + "".join(f" {k}={v}" for k, v in options.items() if k != "seed")
    return {"method": label, "mode": "global" if global_mode else "uniform", "ratio": ratio,
            "mean cosine": round(float(cosine.mean()), 4), "p10 cosine": round(float(torch.quantile(cosine, 0.1)), 4),
            "heads": f"{min(heads)}-{max(heads)}" if min(heads) != max(heads) else str(heads[0]),
            "params removed": report.params_before - report.params_after, "time_s": round(seconds, 2)}


def heads_table(methods: Sequence[str] = METHODS, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                modes: Sequence[bool] = (False, True), calibration_count: int = 300, eval_count: int = 600,
                validation_count: int = 0, batch_size: int = 32, max_length: int = 128,
                option_sets: Sequence[dict[str, Any]] = ({},)) -> list[dict[str, Any]]:
    """Rows of the head table: every method × ratio × mode × option set (importable by other benchmarks).

    ``methods`` are :data:`projprune.transformers.HEAD_METHODS` keys, optionally with options
    (:func:`parse_method`); ``option_sets`` are added to every non-random method's options.
    """
    import torch
    torch.manual_seed(1)
    model, tokenizer = load_minilm()
    if validation_count:
        text = calibration_sentences(calibration_count + validation_count)
        calib_text, scored_text = text[:calibration_count], text[calibration_count:]
    else:
        calib_text = calibration_sentences(calibration_count)
        scored_text = evaluation_sentences(eval_count, calib_text)
    calib = batches(tokenizer, calib_text, batch_size, max_length)
    scored = batches(tokenizer, scored_text, batch_size, max_length)
    reference = embed(model, scored)
    rows = []
    for ratio in ratios:
        for global_mode in modes:
            for spec in methods:
                method, fixed = parse_method(spec)
                for options in option_sets:
                    rows.append(run_heads(method, ratio, global_mode, model, reference, calib, scored,
                                          **({"seed": 1} if method == "random" else {**fixed, **options})))
                    print(rows[-1], flush=True)
                    if method == "random":
                        break
    return rows


def bert_base_selection_seconds(tokens: int = 4096, seed: int = 0) -> dict[str, float]:
    """Time of ``calib``'s head selection beyond the statistics on a random BERT-base (12 x 12 heads, hidden 768).

    The statistics are collected once (timed separately); the selection then runs on them.
    """
    import torch
    import transformers as hf

    from projprune.transformers import collect_head_stats, find_attention_blocks, prune_heads

    torch.manual_seed(seed)
    model = hf.BertModel(hf.BertConfig()).eval()
    ids = [torch.randint(0, 30522, (8, 128)) for _ in range(tokens // (8 * 128))]
    start = time.perf_counter()
    stats = collect_head_stats(model, find_attention_blocks(model), ids)
    statistics = time.perf_counter() - start
    out = {"statistics_s": round(statistics, 2)}
    for ratio in (0.25, 0.5):
        for global_mode in (False, True):
            pruned = copy.deepcopy(model)
            start = time.perf_counter()
            prune_heads(pruned, ratio, "calib", global_mode=global_mode, stats=stats)
            out[f"{ratio:.0%} {'global' if global_mode else 'uniform'}_s"] = round(time.perf_counter() - start, 2)
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods, each optionally name/option=value/...")
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--modes", default="uniform,global")
    parser.add_argument("--calibration-sentences", type=int, default=300)
    parser.add_argument("--eval-sentences", type=int, default=600)
    parser.add_argument("--validation-sentences", type=int, default=0,
                        help="score on this many further docstring sentences instead of the evaluation text")
    parser.add_argument("--lambdas", default="", help="calib only: comma-separated relative ridges to compare")
    parser.add_argument("--bert-base-timing", action="store_true", help="also time calib's selection on BERT-base")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    option_sets = [{"lmbda": float(x)} for x in split_list(args.lambdas)] or [{}]
    rows = heads_table(split_list(args.methods), [float(r) for r in split_list(args.ratios)],
                       [m == "global" for m in split_list(args.modes)], args.calibration_sentences,
                       args.eval_sentences, args.validation_sentences, option_sets=option_sets)
    print(f"\n## all-MiniLM-L6-v2 heads ({time.strftime('%Y-%m-%d')}), "
          f"{'validation' if args.validation_sentences else 'held-out evaluation'} text\n")
    print(markdown_table(rows))
    if args.bert_base_timing:
        print("\nBERT-base-shaped random model, calib head selection:", bert_base_selection_seconds())
    return rows


if __name__ == "__main__":
    run_cli(main, "python benchmarks/minilm_heads.py")
