"""Compare every FFN pruning method on one Hugging Face model and a local text file.

    python -m engine.hf_compare --model PATH_OR_NAME --ratio 0.3 --text-file notes.txt

Each method prunes a fresh copy of the model with :func:`projprune.transformers.prune_ffn`;
the table reports its fidelity to the original on the text (mean per-token cosine of the
final hidden states; perplexity for language models), the real parameter counts (the
ratio counts FFN width only) and the time pruning took (PruneNet: training included,
unless a saved policy is reused). Outputs go to ``<output-dir>/<run name>/``: the log
``<run name>.txt``, ``results.csv``, ``results.md`` and a figure.

The calibrated methods (``calib``, ``act_norm``) run only with ``--calibration-file``: text
that must differ from ``--text-file`` (an identical file is refused); the log says which
file calibrates and which evaluates.

Without a tokenizer beside the model (``--tokenizer`` or the model directory) the text is
read as UTF-8 bytes (ids ``byte % vocab_size``), which is enough to measure fidelity.

``--parts`` chooses what is pruned: ``ffn`` (default) runs :func:`prune_ffn` and ``--ratio`` is the
fraction of FFN units; ``heads``, ``heads,ffn`` run :func:`projprune.transformers.prune_blocks` and
``--ratio`` is the fraction of the attention + FFN projection parameters removed (methods of
``BLOCK_METHODS``; ``--global`` splits the budget between heads, FFN units and layers).

    python -m engine.hf_compare --model PATH --parts heads,ffn --ratio 0.3 --text-file a.txt --calibration-file b.txt
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python engine/hf_compare.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import harness  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch

__all__ = ["CompareConfig", "main"]


@dataclass
class CompareConfig:
    model: str = field(default="", metadata={"help": "model directory written by save_pretrained, or a hub name"})
    ratio: float = field(default=0.3, metadata={"help": "fraction of FFN hidden units removed (FFN width only)"})
    text_file: str = field(default="", metadata={"help": "UTF-8 text to measure fidelity on"})
    calibration_file: str = field(default="", metadata={
        "help": "UTF-8 text the calibrated methods (calib, act_norm) read; must differ from --text-file"})
    calibration_chunks: int = field(default=16, metadata={"help": "calibration chunks taken from that text"})
    methods: str = field(default="all", metadata={"help": "comma-separated methods of FFN_METHODS, or 'all'"})
    global_mode: bool = field(default=False, metadata={"flag": "--global", "help": "choose widths across layers"})
    parts: str = field(default="ffn", metadata={
        "help": "what to prune: ffn (prune_ffn, --ratio = FFN units) or heads / heads,ffn (prune_blocks, --ratio = "
                "attention + FFN parameters)"})
    seq_len: int = field(default=128, metadata={"help": "tokens per evaluation chunk"})
    max_chunks: int = field(default=16, metadata={"help": "evaluation chunks taken from the text"})
    batch_size: int = field(default=4, metadata={"help": "chunks per forward pass"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer path/name (default: the model's, else bytes)"})
    output_dir: str = field(default="run/transformers", metadata={"help": "parent directory of the run"})
    prunenet_episodes: int = field(default=20, metadata={"help": "PruneNet training episodes (reference: 20)"})
    prunenet_lr: float = field(default=1e-3, metadata={"help": "PruneNet AdamW learning rate (reference: 1e-3)"})
    policy_dir: str = field(default="", metadata={"help": "reuse/save PruneNet policies here (reference names)"})
    policy_ratio: float = field(default=-1.0, metadata={"help": "ratio PruneNet is trained at (default: --ratio)"})
    seed: int = field(default=1, metadata={"help": "seed for random methods and PruneNet"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})


# --------------------------------------------------------------------------- inputs
def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "owner/name"; anything else with a separator is a local path.
    return name.startswith((".", "/", "~")) or name.count(os.sep) > 1


def _parts(cfg: CompareConfig) -> tuple[str, ...]:
    parts = tuple(harness.split_list(cfg.parts))
    if not parts or len(set(parts)) != len(parts) or any(p not in ("heads", "ffn") for p in parts):
        raise ValueError(f"--parts: expected 'ffn', 'heads' or 'heads,ffn', got {cfg.parts!r}")
    return parts


def _method_table(cfg: CompareConfig) -> dict[str, str]:
    """Method name -> description for what ``--parts`` prunes."""
    from projprune.transformers import BLOCK_METHODS, FFN_METHODS

    if _parts(cfg) == ("ffn",):
        return {name: spec.description for name, spec in FFN_METHODS.items()}
    return dict(BLOCK_METHODS)


def _check_config(cfg: CompareConfig) -> list[str]:
    from projprune.transformers.prune import FFN_METHODS

    if not cfg.model:
        raise ValueError("--model: expected a model directory (save_pretrained) or a hub name")
    if (_looks_like_path(cfg.model) or Path(cfg.model).exists()) and not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"--model: directory {cfg.model} does not exist")
    if not cfg.text_file or not Path(cfg.text_file).is_file():
        raise FileNotFoundError(f"--text-file: file {cfg.text_file!r} does not exist (expected UTF-8 text)")
    if not 0.0 <= cfg.ratio < 1.0:
        raise ValueError(f"--ratio: expected a fraction in [0, 1), got {cfg.ratio}")
    if cfg.policy_ratio != -1.0 and not 0.0 < cfg.policy_ratio < 1.0:
        raise ValueError(f"--policy-ratio: expected a fraction in (0, 1) or -1 (use --ratio), got {cfg.policy_ratio}")
    if cfg.calibration_file:
        if not Path(cfg.calibration_file).is_file():
            raise FileNotFoundError(f"--calibration-file: file {cfg.calibration_file!r} does not exist")
        same_path = Path(cfg.calibration_file).resolve() == Path(cfg.text_file).resolve()
        if same_path or Path(cfg.calibration_file).read_bytes() == Path(cfg.text_file).read_bytes():
            raise ValueError(f"--calibration-file: {cfg.calibration_file} is identical to --text-file "
                             f"{cfg.text_file}; calibration text must be disjoint from the evaluation text")
    for name, value in (("--calibration-chunks", cfg.calibration_chunks),
                        ("--seq-len", cfg.seq_len), ("--max-chunks", cfg.max_chunks),
                        ("--batch-size", cfg.batch_size), ("--prunenet-episodes", cfg.prunenet_episodes)):
        if value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value}")
    valid = _method_table(cfg)
    methods = list(valid) if cfg.methods == "all" else harness.split_list(cfg.methods)
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ValueError(f"--methods: expected 'all' or names from {sorted(valid)} (--parts {cfg.parts}), got "
                         f"{cfg.methods!r}")
    calibrated = [m for m in methods if FFN_METHODS[m].needs_stats]
    if calibrated and not cfg.calibration_file:
        if cfg.methods != "all":
            raise ValueError(f"--methods: {calibrated} need --calibration-file (text disjoint from --text-file)")
        methods = [m for m in methods if m not in calibrated]
    if cfg.global_mode and "prunenet" in methods:
        if cfg.methods != "all":
            raise ValueError("--methods: prunenet has no global mode; drop it or --global")
        methods.remove("prunenet")
    return methods


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def _token_ids(cfg: CompareConfig, vocab_size: int, logger, path: str = "", flag: str = "--text-file",
               max_chunks: int = 0) -> torch.Tensor:
    """``(chunks, seq_len)`` token ids of the text file (``path``: another file, e.g. calibration)."""
    import torch

    path = path or cfg.text_file
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{flag}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValueError(f"{flag}: {path} is empty")
    ids: list[int] = []
    source = cfg.tokenizer or cfg.model
    local_files = Path(source).is_dir() and any((Path(source) / name).is_file() for name in _TOKENIZER_FILES)
    if cfg.tokenizer or local_files or not Path(source).exists():
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
            ids = list(tokenizer(text)["input_ids"])
            logger.info(f"Tokenizer: {type(tokenizer).__name__} from {source}")
        except Exception as exc:  # hub name without network, broken files: fall back to bytes
            if cfg.tokenizer:
                raise ValueError(f"--tokenizer: cannot load {cfg.tokenizer!r}: {exc}") from exc
    if len(ids) < 2:
        ids = [byte % vocab_size for byte in text.encode("utf-8")]
        logger.info(f"Tokenizer: none beside the model, using UTF-8 bytes modulo vocab_size={vocab_size}")
    ids = [int(i) % vocab_size for i in ids]
    seq_len = cfg.seq_len
    if len(ids) < seq_len:
        seq_len = len(ids)
        logger.info(f"Text shorter than --seq-len: one chunk of {seq_len} tokens")
    chunks = min(max_chunks or cfg.max_chunks, len(ids) // seq_len)
    return torch.tensor(ids[: chunks * seq_len], dtype=torch.long).view(chunks, seq_len)


def _load_model(cfg: CompareConfig) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from projprune.transformers.loading import from_pretrained

    config = AutoConfig.from_pretrained(cfg.model)
    architectures = getattr(config, "architectures", None) or []
    causal = any("CausalLM" in a or "LMHead" in a for a in architectures)
    model = from_pretrained(cfg.model, AutoModelForCausalLM if causal else AutoModel)
    return model.float().eval()


def _width_text(widths: Sequence[int]) -> str:
    """``"64"`` for one width, ``"40-64"`` for a range (global mode)."""
    return f"{min(widths)}-{max(widths)}" if min(widths) != max(widths) else str(widths[0])


def _run_prunenet(model: torch.nn.Module, cfg: CompareConfig, logger):
    """PruneNet through prune_ffn; the policy is trained at ``--policy-ratio`` (default ``--ratio``)
    unless ``--policy-dir`` holds one already, and saved there when trained."""
    from projprune.transformers import find_ffn_blocks, load_policy, prune_ffn, save_policy, train_policy
    from projprune.transformers.prunenet import policy_filename

    train_ratio = cfg.ratio if cfg.policy_ratio == -1.0 else cfg.policy_ratio
    path = Path(cfg.policy_dir) / policy_filename(cfg.model, train_ratio) if cfg.policy_dir else None
    start = time.perf_counter()
    if path is not None and path.is_file():
        policy = load_policy(path)
        logger.info(f"PruneNet: reusing {path} (trained at ratio {policy.ratio})")
    else:
        weights = [block.policy_weight() for block in find_ffn_blocks(model)]
        policy = train_policy(weights, train_ratio, episodes=cfg.prunenet_episodes, lr=cfg.prunenet_lr,
                              seed=cfg.seed)
        logger.info(f"PruneNet: trained {cfg.prunenet_episodes} episodes at ratio {train_ratio} in "
                    f"{policy.seconds:.2f}s, best total reward {policy.best_reward:.3f}")
        if path is not None:
            save_policy(path, policy)
            logger.info(f"PruneNet: saved the policy to {path}")
    report = prune_ffn(model, cfg.ratio, "prunenet", policy=policy)
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------- main
def _figure(rows: list[dict[str, Any]], path_stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pruned = [row for row in rows if row["method"] != "dense"]
    fig, (ax_cos, ax_time) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = [row["method"] for row in pruned]
    ax_cos.bar(names, [float(row["cosine"]) for row in pruned])
    ax_cos.set_ylabel("cosine to original")
    ax_time.bar(names, [float(row["prune_s"]) for row in pruned])
    ax_time.set_ylabel("pruning time (s)")
    for ax in (ax_cos, ax_time):
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    harness.save_figure(fig, path_stem)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison; returns the table rows (also written as CSV and Markdown)."""
    cfg = harness.parse_config(CompareConfig, argv, description=__doc__.splitlines()[0])
    methods = _check_config(cfg)
    with harness.num_threads(cfg.threads):
        return _compare(cfg, methods)


def _prune_blocks(model: torch.nn.Module, cfg: CompareConfig, method: str, calibration):
    from projprune.transformers import prune_blocks

    return prune_blocks(model, cfg.ratio, method, None if method == "l2" else calibration, parts=_parts(cfg),
                        global_mode=cfg.global_mode, progress=True)


def _report_widths(report) -> str:
    """FFN widths (``prune_ffn``), else ``heads/FFN`` ranges (``prune_blocks``)."""
    if hasattr(report, "widths"):
        return _width_text(report.widths)
    return "/".join(_width_text(w) for w in (report.heads_after, report.ffn_after) if w)


def _compare(cfg: CompareConfig, methods: list[str]) -> list[dict[str, Any]]:
    from projprune.transformers import FFN_METHODS, find_ffn_blocks, prune_ffn
    from projprune.transformers.compare import evaluate_fidelity

    harness.seed_everything(cfg.seed)
    model_name = Path(cfg.model.rstrip("/")).name
    scope = "global" if cfg.global_mode else "local"
    parts = _parts(cfg)
    run_name = f"compare-{scope}-{cfg.ratio}-{model_name}" + ("" if parts == ("ffn",) else "-" + "-".join(parts))
    descriptions = _method_table(cfg)
    run_dir = Path(cfg.output_dir) / run_name
    logger = harness.get_logger(run_name, run_dir / f"{run_name}.txt")
    try:
        harness.log_config(logger, cfg)
        original = _load_model(cfg)
        input_ids = _token_ids(cfg, int(original.config.vocab_size), logger)
        logger.info(f"Evaluation text (--text-file {cfg.text_file}): {input_ids.shape[0]} chunks of "
                    f"{input_ids.shape[1]} tokens")
        calibration = None
        if cfg.calibration_file:
            calib_ids = _token_ids(cfg, int(original.config.vocab_size), logger, cfg.calibration_file,
                                   "--calibration-file", cfg.calibration_chunks)
            calibration = list(calib_ids.split(cfg.batch_size))
            logger.info(f"Calibration text (--calibration-file {cfg.calibration_file}, disjoint from the "
                        f"evaluation text): {calib_ids.shape[0]} chunks of {calib_ids.shape[1]} tokens")
        reference, dense_ppl, _ = evaluate_fidelity(original, input_ids, batch_size=cfg.batch_size)
        dense_params = harness.count_params(original)
        results = harness.ResultsCSV(run_dir / "results.csv")
        widths = [block.width for block in find_ffn_blocks(original)]
        rows = [{"method": "dense", "description": "original model",
                 "widths": _width_text(widths),
                 "params_M": f"{dense_params / 1e6:.3f}", "param_reduction_%": "0.00", "cosine": "1.000000",
                 "ppl": "" if dense_ppl is None else f"{dense_ppl:.3f}", "prune_s": "0.00"}]
        results.append(rows[0])
        for method in harness.progress(methods, desc="methods"):
            model = copy.deepcopy(original)
            if method == "prunenet":
                report = _run_prunenet(model, cfg, logger)
            elif parts != ("ffn",):
                report = _prune_blocks(model, cfg, method, calibration)
            else:
                options: dict[str, Any] = {"seed": cfg.seed} if method == "random" else {}
                if FFN_METHODS[method].needs_stats:
                    options["calibration"] = calibration
                report = prune_ffn(model, cfg.ratio, method, global_mode=cfg.global_mode, progress=True, **options)
            _, ppl, cosine = evaluate_fidelity(model, input_ids, reference, batch_size=cfg.batch_size)
            row = {
                "method": method,
                "description": descriptions[method],
                "widths": _report_widths(report),
                "params_M": f"{report.params_after / 1e6:.3f}",
                "param_reduction_%": f"{100 * report.param_reduction:.2f}",
                "cosine": f"{cosine:.6f}",
                "ppl": "" if ppl is None else f"{ppl:.3f}",
                "prune_s": f"{report.seconds:.2f}",
            }
            rows.append(row)
            results.append(row)
            logger.info(f"{method}: Params: {report.params_before / 1e6:.2f} M => {report.params_after / 1e6:.2f} M "
                        f"({100 * report.params_after / report.params_before:.2f}%), cosine={cosine:.6f}"
                        + ("" if ppl is None else f", PPL: {dense_ppl:.3f} => {ppl:.3f}")
                        + f", time={report.seconds:.2f}s")
            del model
        table = markdown_table(rows)
        harness.atomic_write_text(run_dir / "results.md", f"# {run_name}\n\n{table}")
        _figure(rows, run_dir / "fidelity")
        logger.info(f"Results: {run_dir / 'results.csv'}, {run_dir / 'results.md'}")
        print(table)
        return rows
    finally:
        harness.close_logger(logger)


if __name__ == "__main__":
    harness.run_cli(main, "python -m engine.hf_compare")
