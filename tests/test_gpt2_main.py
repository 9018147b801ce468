"""gpt2/main.py and gpt2/parse.py end to end on a tiny GPT-2 trained for a few steps on a generated corpus."""

from __future__ import annotations

import math
import random

import pytest

from engine.harness import read_csv
from gpt2 import main as gpt2_main
from gpt2 import parse as gpt2_parse

WORDS = ("return the value of a node when the list is empty raise an error for each item in the "
         "buffer close the file and flush data to the stream parse the header of a message").split()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(200):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(4)]
        (root / f"mod{i}.py").write_text(f'"""{sentences[0]}\n\n{sentences[1]}"""\n# {sentences[2]}\n'
                                         f'def f():\n    """{sentences[3]}"""\n')
    return root


def _tiny_args(corpus_dir, out, *extra):
    return ["--tiny-steps", "3", "--tiny-layers", "1", "--tiny-embd", "64", "--tiny-vocab", "300",
            "--tiny-corpus-dir", str(corpus_dir), "--output-dir", str(out), "--max-blocks", "3",
            "--batch-size", "3", *extra]


def test_tiny_runs_prune_and_parse(corpus_dir, tmp_path):
    out = tmp_path / "run"
    row = gpt2_main.main(_tiny_args(corpus_dir, out, "--method", "proj", "--rate", "0.2"))
    run_dir = out / "gpt2" / "stdlib-proj-0.20-tiny"
    assert read_csv(run_dir / "result.csv")[0]["perplexity"] == row["perplexity"]
    assert math.isfinite(float(row["perplexity"])) and float(row["perplexity"]) > 1
    assert int(row["params"]) < int(row["params_before"])
    log = (run_dir / "stdlib-proj-0.20-tiny.txt").read_text()
    assert log.splitlines()[0].endswith("INFO: model: tiny")
    assert "QK dims per head: [26]" in log  # 2 heads of 32: 32 - round(0.2 * 32)
    assert "Tiny step 2/3" in log

    gpt2_main.main(_tiny_args(corpus_dir, out, "--method", "none"))
    none_log = out / "gpt2" / "stdlib-none-0.00-tiny" / "stdlib-none-0.00-tiny.txt"
    assert "Tiny GPT-2 loaded from" in none_log.read_text()
    mlp_row = gpt2_main.main(_tiny_args(corpus_dir, out, "--method", "norm", "--rate", "0.1",
                                        "--mlp-rate", "0.25", "--mlp-method", "exact"))
    assert mlp_row["mlp_method"] == "exact"

    markdown = gpt2_parse.main(["--output-dir", str(out)])
    assert markdown.splitlines()[0] == "| model | dataset | none | norm .1/.2 | proj .1/.2 |"
    assert "| tiny | stdlib |" in markdown and "MLP exact 0.25" in markdown
    assert f"| - / {float(row['perplexity']):.2f} |" in markdown
    for name in ("table.csv", "table.md", "table.tex", "ppl_vs_rate.png", "ppl_vs_rate.pdf"):
        assert (out / "gpt2" / name).is_file()
    table = read_csv(out / "gpt2" / "table.csv")
    plain = next(r for r in table if r["mlp"] == "")
    assert float(plain["proj@0.2"]) == pytest.approx(float(row["perplexity"]))


def test_same_seed_same_result_and_text_file(corpus_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Return the value of the node. Close the file and flush the stream.\n" * 30)
    rows = [gpt2_main.main(_tiny_args(corpus_dir, tmp_path / f"r{i}", "--text-file", str(text),
                                      "--method", "proj_coef", "--rate", "0.1")) for i in range(2)]
    assert rows[0]["dataset"] == "text"
    assert rows[0]["perplexity"] == rows[1]["perplexity"]
    assert (tmp_path / "r0" / "gpt2" / "text-proj_coef-0.10-tiny" / "result.csv").is_file()


@pytest.mark.parametrize("extra, error, match", [
    (["--rate", "1.5", "--method", "proj"], ValueError, "rate"),
    (["--method", "none", "--rate", "0.1"], ValueError, "none"),
    (["--mlp-method", "nope"], ValueError, "mlp-method"),
    (["--text-file", "/nonexistent/x.txt"], FileNotFoundError, "x.txt"),
    (["--dataset", "text"], ValueError, "text-file"),
    (["--model", "not-a-model"], ValueError, "--model"),
])
def test_bad_arguments_fail_before_writing(tmp_path, extra, error, match):
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        gpt2_main.main(["--output-dir", str(out), *extra])
    assert not out.exists()


def test_parse_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GPT-2 runs"):
        gpt2_parse.main(["--output-dir", str(tmp_path)])


def test_grid_expands_paper_and_tiny_presets(tmp_path, capsys):
    from gpt2.grid import PRESETS, GPT2Grid, build_stages
    from gpt2.grid import main as grid_main

    stages = build_stages(GPT2Grid(models=PRESETS["paper"], output_dir=str(tmp_path)))
    base, prune = stages
    assert [s.name for s in stages] == ["base", "prune"]
    assert len(base.tasks) == 5 and len(prune.tasks) == 5 * 7 * 3
    names = [t.name for s in stages for t in s.tasks]
    assert len(set(names)) == len(names)
    assert "wikitext2-proj_coef-0.10-gpt2-xl" in names and "ptb-none-0.00-gpt2" in names
    task = next(t for t in prune.tasks if t.name == "ptb-proj-0.30-gpt2")
    assert task.command[-8:] == ("--dataset", "ptb", "--method", "proj", "--rate", "0.3", "--output-dir", str(tmp_path))
    assert task.done_path == f"{tmp_path}/gpt2/ptb-proj-0.30-gpt2/result.csv"
    with pytest.raises(ValueError, match="methods"):
        GPT2Grid(models=PRESETS["tiny"], methods=("nope",))

    assert grid_main(["--preset", "tiny", "--methods", "proj", "--rates", "0.2", "--backend", "bash", "--dry-run",
                      "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "-m gpt2.main --model tiny --dataset stdlib --method proj --rate 0.2" in printed
    assert not (tmp_path / "gpt2").exists()


def test_a_local_transformers_model_directory_runs(tmp_path):
    """The path the OpenAI checkpoints take: GPT2LMHeadModel + tokenizer from a directory, a local text."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from gpt2.tiny import train_tokenizer

    text = "Return the value of the node. Close the file and flush the stream.\n\n" * 40
    tokenizer = train_tokenizer(text, 290)
    model_dir = tmp_path / "local-gpt2"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(model_dir)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    (tmp_path / "t.txt").write_text(text)
    row = gpt2_main.main(["--model", str(model_dir), "--text-file", str(tmp_path / "t.txt"), "--method", "proj_comp",
                          "--rate", "0.25", "--output-dir", str(tmp_path / "run")])
    log = (tmp_path / "run" / "gpt2" / "text-proj_comp-0.25-local-gpt2" / "text-proj_comp-0.25-local-gpt2.txt")
    assert "QK dims per head: [12, 12]" in log.read_text()
    assert int(row["blocks"]) >= 2 and math.isfinite(float(row["perplexity"]))


def test_calibrated_mlp_run_uses_training_text(corpus_dir, tmp_path):
    out = tmp_path / "run"
    row = gpt2_main.main(_tiny_args(corpus_dir, out, "--mlp-method", "calib", "--mlp-rate", "0.25",
                                    "--calib-tokens", "256"))
    assert math.isfinite(float(row["perplexity"]))
    log = next((out / "gpt2").glob("*/*.txt")).read_text()
    assert "Calibration: 256 tokens of the tiny corpus training split" in log
    text = tmp_path / "eval.txt"
    text.write_text("some evaluation text " * 20)
    with pytest.raises(ValueError, match="--calib-text-file must differ"):
        gpt2_main.main(_tiny_args(corpus_dir, out, "--text-file", str(text), "--calib-text-file", str(text)))
