"""Benchmark: the cost of calibrated pruning (statistics + selection), separate from the model's forward.

Three cases of the calibrated-method goals:

- every FFN of a BERT-base-sized model: 12 layers of 3072 units, 512 sequences of 128 tokens;
- one GPT-2 XL MLP: 6400 units reading 1600 features, 64k tokens;
- ``llama-7b-block``: one LLaMA-7B-shaped decoder layer (hidden 4096, 32 heads, FFN 11008, random
  weights, a 1,024-token vocabulary) pruned 30 % of its attention + FFN parameters by
  ``prune_blocks(..., "calib")`` on 16k synthetic calibration tokens (32 sequences of 512). This row
  times the whole call (forwards, statistics, selection, writing); ``forward_s`` is one plain forward
  over the same tokens for scale; ``peak_rss_gb`` the process's peak resident memory (model and
  forwards included). ``--model-dtype bfloat16`` runs that model in bfloat16;
  ``--work-dtype float32`` runs the FFN greedy in float32 (``prune_blocks(..., dtype=torch.float32)``).

Activations are GELU outputs of random pre-activations, fed to :class:`projprune.ActivationStats`
in batches of ``--batch-tokens`` rows (what the forward hooks of ``collect_activation_stats``
do per batch); selection is the ``calib`` method's exact greedy with those statistics at 30 %.
The model's own forward pass is not timed (it is the same for every method). Besides wall-clock
seconds the table gives the process's CPU seconds (``*_cpu_s``): with ``--threads 1`` on a shared
machine that is the cost on one unloaded core, whatever else runs. ``--gram-dtype bfloat16`` times
the OPT-IN low-precision statistics (``ActivationStats(gram_dtype=torch.bfloat16)``, ~1e-3 relative
error of the second moments); the default is the exact float32 products.

    python benchmarks/calib_cost.py --threads 2
    python benchmarks/calib_cost.py --cases gpt2-xl --tokens-scale 0.25   # a quicker look
    python benchmarks/calib_cost.py --cases bert-base --gram-dtype bfloat16  # opt-in bf16 statistics
    python benchmarks/calib_cost.py --cases llama-7b-block --threads 2
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/calib_cost.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import parse_config, run_cli, seed_everything  # noqa: E402
from engine.report import markdown_table  # noqa: E402

# case -> (layers, units n, input width m, tokens, goal in seconds)
CASES = {"bert-base": (12, 3072, 768, 512 * 128, 60.0), "gpt2-xl": (1, 6400, 1600, 65536, 90.0)}
# one LLaMA-7B-shaped layer through prune_blocks: (hidden, heads, FFN units, tokens, sequence length, goal in seconds)
BLOCK_CASES = {"llama-7b-block": (4096, 32, 11008, 16384, 512, 180.0)}


@dataclass
class CostConfig:
    cases: str = field(default="bert-base,gpt2-xl,llama-7b-block",
                       metadata={"help": f"comma-separated of {sorted(CASES) + sorted(BLOCK_CASES)}"})
    ratio: float = field(default=0.3, metadata={"help": "fraction of units removed per layer"})
    batch_tokens: int = field(default=8192, metadata={"help": "activation rows per statistics update"})
    tokens_scale: float = field(default=1.0, metadata={"help": "multiply every case's token count"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    gram_dtype: str = field(default="float32", metadata={"help": "statistics products: float32 (exact, default) "
                                                                 "or bfloat16 (opt-in, ~1e-3 relative error)"})
    model_dtype: str = field(default="float32", metadata={"help": "llama-7b-block's weights: float32 or bfloat16"})
    work_dtype: str = field(default="float64", metadata={
        "help": "llama-7b-block: the calib FFN greedy's compute dtype (prune_blocks' dtype=): float64 or float32"})
    sequential: str = field(default="default", metadata={
        "help": "llama-7b-block: prune_blocks' sequential statistics: default, true or false"})
    seed: int = 1


def run_case(name: str, cfg: CostConfig) -> dict:
    import torch
    import torch.nn.functional as F

    from projprune import PAIR_METHODS, ActivationStats, greedy_exact

    layers, n, m, tokens, goal = CASES[name]
    tokens = max(cfg.batch_tokens, int(tokens * cfg.tokens_scale))
    generator = torch.Generator().manual_seed(cfg.seed)
    stats_s = select_s = stats_cpu = select_cpu = 0.0
    gram_dtype = None if cfg.gram_dtype == "float32" else torch.bfloat16
    for _ in range(layers):
        W = torch.randn(n, m, generator=generator) / m**0.5
        V = torch.randn(m, n, generator=generator) / n**0.5
        stats = ActivationStats(n, gram_dtype=gram_dtype)
        for start in range(0, tokens, cfg.batch_tokens):
            x = torch.randn(min(cfg.batch_tokens, tokens - start), m, generator=generator)
            h = F.gelu(x @ W.T)
            begin, cpu = time.perf_counter(), time.process_time()
            stats.update(h)
            stats_s += time.perf_counter() - begin
            stats_cpu += time.process_time() - cpu
        begin, cpu = time.perf_counter(), time.process_time()
        greedy_exact(W, round(cfg.ratio * n), PAIR_METHODS["calib"].options, V=V, stats=stats)
        select_s += time.perf_counter() - begin
        select_cpu += time.process_time() - cpu
    total = stats_s + select_s
    met = "-" if cfg.tokens_scale != 1.0 else ("no" if total >= goal else
                                               "yes" if gram_dtype is None else "yes (opt-in bf16 statistics)")
    return {"case": name, "layers x units": f"{layers} x {n}", "tokens": tokens, "ratio": cfg.ratio,
            "gram_dtype": cfg.gram_dtype, "threads": torch.get_num_threads(),
            "statistics_s": f"{stats_s:.1f}", "selection_s": f"{select_s:.1f}", "total_s": f"{total:.1f}",
            "statistics_cpu_s": f"{stats_cpu:.1f}", "selection_cpu_s": f"{select_cpu:.1f}",
            "cpu_s": f"{stats_cpu + select_cpu:.1f}", "goal_s": f"{goal:.0f}",
            "met": met}


def run_block_case(name: str, cfg: CostConfig) -> dict:
    """One LLaMA-7B-shaped decoder layer pruned by ``prune_blocks(..., "calib")``: the whole call, timed."""
    import torch
    import transformers as hf

    from projprune.transformers import prune_blocks

    hidden, heads, units, tokens, seq_len, goal = BLOCK_CASES[name]
    tokens = max(seq_len, int(tokens * cfg.tokens_scale))
    torch.manual_seed(cfg.seed)
    config = hf.LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
                            intermediate_size=units, num_hidden_layers=1, vocab_size=1024)
    dtype = torch.bfloat16 if cfg.model_dtype == "bfloat16" else torch.float32
    model = hf.LlamaModel(config).to(dtype).eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, 1024, (tokens // seq_len, seq_len), generator=generator)
    calibration = list(ids.split(max(1, 4096 // seq_len)))  # 4,096 tokens per forward
    begin = time.perf_counter()
    with torch.no_grad():
        for batch in calibration:
            model(input_ids=batch)
    forward = time.perf_counter() - begin
    options = {} if cfg.sequential == "default" else {"sequential": cfg.sequential == "true"}
    gram_dtype = None if cfg.gram_dtype == "float32" else torch.bfloat16
    if cfg.work_dtype == "float32":
        options["dtype"] = torch.float32
    begin, cpu = time.perf_counter(), time.process_time()
    report = prune_blocks(model, cfg.ratio, "calib", calibration, gram_dtype=gram_dtype, **options)
    total, cpu = time.perf_counter() - begin, time.process_time() - cpu
    met = "-" if cfg.tokens_scale != 1.0 else ("no" if total >= goal else "yes")
    return {"case": name, "layers x units": f"1 x ({heads} heads + {units} FFN)", "tokens": tokens,
            "ratio": cfg.ratio, "gram_dtype": cfg.gram_dtype, "threads": torch.get_num_threads(),
            "model_dtype": cfg.model_dtype, "work_dtype": cfg.work_dtype, "sequential": report.sequential,
            "forward_s": f"{forward:.1f}",
            "heads kept": report.heads_after[0], "FFN kept": report.ffn_after[0],
            "removed %": f"{100 * report.removed_params / report.block_params_before:.1f}",
            "total_s": f"{total:.1f}", "cpu_s": f"{cpu:.1f}", "peak_rss_gb": f"{_peak_rss_gb():.1f}",
            "goal_s": f"{goal:.0f}", "met": met}


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv=None) -> list[dict]:
    cfg = parse_config(CostConfig, argv, description=__doc__.splitlines()[0])
    import torch
    names = [c.strip() for c in cfg.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES and c not in BLOCK_CASES]
    if unknown or not names:
        raise ValueError(f"--cases: expected names from {sorted(CASES) + sorted(BLOCK_CASES)}, got {cfg.cases!r}")
    if cfg.model_dtype not in ("float32", "bfloat16") or cfg.sequential not in ("default", "true", "false"):
        raise ValueError(f"--model-dtype must be float32 or bfloat16 and --sequential default, true or false, got "
                         f"{cfg.model_dtype!r}, {cfg.sequential!r}")
    if not 0 < cfg.ratio < 1 or cfg.batch_tokens < 1 or not 0 < cfg.tokens_scale <= 1:
        raise ValueError("--ratio must be in (0, 1), --batch-tokens >= 1, --tokens-scale in (0, 1]")
    if cfg.gram_dtype not in ("float32", "bfloat16") or cfg.work_dtype not in ("float64", "float32"):
        raise ValueError(f"--gram-dtype must be float32 or bfloat16 and --work-dtype float64 or float32, got "
                         f"{cfg.gram_dtype!r}, {cfg.work_dtype!r}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    rows = [run_case(name, cfg) for name in names if name in CASES]
    if rows:
        print(markdown_table(rows))
    block_rows = [run_block_case(name, cfg) for name in names if name in BLOCK_CASES]
    if block_rows:
        print(markdown_table(block_rows))
    rows += block_rows
    return rows


if __name__ == "__main__":
    run_cli(main, "benchmarks/calib_cost.py")
