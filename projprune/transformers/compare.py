"""Fidelity of a (pruned) Hugging Face model to its original: pure tensors in, numbers out.

The command-line comparison of every FFN method that reports these numbers is an experiment
script of the repository, not part of the library.
"""

from __future__ import annotations

import math

import torch

__all__ = ["evaluate_fidelity"]


def _is_language_model(model: torch.nn.Module) -> bool:
    name = type(model).__name__
    return "CausalLM" in name or "LMHead" in name


@torch.no_grad()
def evaluate_fidelity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    reference: list[torch.Tensor] | None = None,
    batch_size: int = 4,
) -> tuple[list[torch.Tensor], float | None, float | None]:
    """Final hidden states, perplexity and cosine to ``reference``.

    Args:
        input_ids: ``(chunks, seq_len)``.
        reference: final hidden states of the original model, one ``(b, seq_len, d)`` per batch.

    Returns:
        ``(hidden, perplexity or None, mean per-token cosine or None)``.
    """
    hidden, nll = [], []
    lm = _is_language_model(model)
    for start in range(0, input_ids.shape[0], batch_size):
        batch = input_ids[start : start + batch_size]
        kwargs = {"labels": batch} if lm else {}
        out = model(input_ids=batch, output_hidden_states=True, **kwargs)
        hidden.append(out.hidden_states[-1].float())
        if lm:
            nll.append(float(out.loss) * batch.shape[0])
    ppl = math.exp(sum(nll) / input_ids.shape[0]) if lm else None
    cosine = None
    if reference is not None:
        sims = [torch.nn.functional.cosine_similarity(h, r, dim=-1).flatten() for h, r in zip(hidden, reference)]
        cosine = float(torch.cat(sims).mean())
    return hidden, ppl, cosine


_MOVED = {"main": "engine.hf_compare.main", "CompareConfig": "engine.hf_compare.CompareConfig",
          "markdown_table": "engine.report.markdown_table"}


def __getattr__(name: str):
    """The command-line names that lived here point to their new home (the library stays standalone)."""
    if name in _MOVED:
        raise AttributeError(f"projprune.transformers.compare.{name} moved to {_MOVED[name]} (the repository's "
                             "experiment code; run the comparison with `python -m engine.hf_compare`)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit("the comparison CLI moved: run `python -m engine.hf_compare` from the repository")
