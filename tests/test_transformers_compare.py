"""python -m engine.hf_compare on small local random models and a local text file."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

from engine.harness import read_csv
from engine.hf_compare import main
from projprune.transformers import FFN_METHODS

TEXT = "Projective pruning removes the units that the others can represent. " * 40
CALIB_TEXT = "Calibration sentences are read once to estimate what every output layer sees. " * 40



@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    common = {"num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 128}
    hf.LlamaForCausalLM(hf.LlamaConfig(hidden_size=32, intermediate_size=64, **common)).save_pretrained(root / "llama")
    hf.BertModel(hf.BertConfig(hidden_size=32, intermediate_size=64, **common)).save_pretrained(root / "bert")
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    (root / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    return root


def _args(root, model, out, *extra):
    return ["--model", str(root / model), "--text-file", str(root / "text.txt"), "--output-dir", str(out),
            "--seq-len", "32", "--max-chunks", "4", "--prunenet-episodes", "2", *extra]


def test_compare_every_method_on_a_language_model(local_models, tmp_path):
    rows = main(_args(local_models, "llama", tmp_path, "--ratio", "0.25", "--calibration-file",
                      str(local_models / "calib.txt")))
    assert [r["method"] for r in rows] == ["dense", *FFN_METHODS]
    run_dir = tmp_path / "compare-local-0.25-llama"
    csv_rows = read_csv(run_dir / "results.csv")
    assert [r["method"] for r in csv_rows] == [r["method"] for r in rows]
    dense = csv_rows[0]
    assert float(dense["ppl"]) > 1 and dense["cosine"] == "1.000000"
    for row in csv_rows[1:]:
        assert -1.0 <= float(row["cosine"]) < 1.0
        assert float(row["ppl"]) > 1 and float(row["prune_s"]) >= 0
        assert row["widths"] == "48"
        assert 0 < float(row["param_reduction_%"]) < 25  # the ratio counts FFN width only
    table = (run_dir / "results.md").read_text()
    assert table.count("\n|") >= len(rows) and "exact_oac" in table and "prunenet" in table
    log = (run_dir / "compare-local-0.25-llama.txt").read_text()
    assert "ratio: 0.25" in log and "Params:" in log and "PPL:" in log
    assert "Calibration text (--calibration-file" in log and "Evaluation text (--text-file" in log
    assert (run_dir / "fidelity.png").is_file() and (run_dir / "fidelity.pdf").is_file()


def test_compare_encoder_global_mode_and_reproducibility(local_models, tmp_path):
    args = _args(local_models, "bert", tmp_path, "--methods", "l2,exact,random", "--global", "--ratio", "0.5")
    first = main(args)
    second = main(args)
    assert [r["ppl"] for r in first] == [""] * 4  # not a language model: cosine only
    timeless = [{k: v for k, v in r.items() if k != "prune_s"} for r in first]
    assert timeless == [{k: v for k, v in r.items() if k != "prune_s"} for r in second]
    assert any("-" in r["widths"] for r in first[1:])  # global mode chose uneven widths


def test_compare_reuses_a_saved_prunenet_policy(local_models, tmp_path):
    policies = tmp_path / "policies"
    args = _args(local_models, "llama", tmp_path, "--methods", "prunenet", "--policy-dir", str(policies),
                 "--policy-ratio", "0.2", "--ratio", "0.4")
    first = main(args)
    saved = list(policies.iterdir())
    assert [p.name for p in saved] == ["model=llama_finetune=False_sparsity=0.2.safetensors"]
    second = main(args)
    assert first[1]["cosine"] == second[1]["cosine"] and first[1]["widths"] == "38"
    log = (tmp_path / "compare-local-0.4-llama" / "compare-local-0.4-llama.txt").read_text()
    assert "reusing" in log


@pytest.mark.parametrize(
    "extra, error, match",
    [
        (["--methods", "proj,l2"], ValueError, "--methods"),
        (["--ratio", "1.5"], ValueError, "--ratio"),
        (["--seq-len", "0"], ValueError, "--seq-len"),
        (["--methods", "calib"], ValueError, "--calibration-file"),
        (["--methods", "calib", "--calibration-file", "SAME"], ValueError, "identical to --text-file"),
        (["--methods", "calib", "--calibration-file", "MISSING"], FileNotFoundError, "--calibration-file"),
    ],
)
def test_compare_bad_arguments_write_nothing(local_models, tmp_path, extra, error, match):
    extra = [{"SAME": str(local_models / "text.txt"), "MISSING": str(local_models / "none.txt")}.get(a, a)
             for a in extra]
    with pytest.raises(error, match=match):
        main(_args(local_models, "llama", tmp_path, *extra))
    assert list(tmp_path.iterdir()) == []


def test_compare_missing_files(local_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="--text-file"):
        main(["--model", str(local_models / "llama"), "--text-file", str(tmp_path / "none.txt")])
    with pytest.raises(FileNotFoundError, match="--model"):
        main(["--model", str(tmp_path / "no" / "model"), "--text-file", str(local_models / "text.txt")])


def test_benchmark_script_runs_on_a_small_model(capsys):
    from benchmarks.transformers_ffn import main as bench_main

    rows = bench_main(["--num-layers", "2", "--hidden-size", "24", "--intermediate-size", "48",
                       "--methods", "exact+compensate,l2"])
    assert [r["method"] for r in rows] == ["exact+compensate", "l2"]
    assert all(r["kept / layer"] == 48 - round(0.3 * 48) for r in rows)
    assert "| exact+compensate | 2 x 48 x 24 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--methods"):
        bench_main(["--methods", "nope"])


def test_compare_tokenizers_local_files_or_bytes(local_models, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    gpt2 = tmp_path / "gpt2"
    hf.GPT2LMHeadModel(hf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)).save_pretrained(gpt2)
    (gpt2 / "text.txt").write_text(TEXT, encoding="utf-8")
    main(_args(gpt2.parent, "gpt2", tmp_path / "out", "--methods", "l2", "--text-file", str(gpt2 / "text.txt")))
    log = (tmp_path / "out" / "compare-local-0.3-gpt2" / "compare-local-0.3-gpt2.txt").read_text()
    assert "UTF-8 bytes" in log  # no tokenizer files: bytes, even though GPT-2 has a hub tokenizer
    words = sorted(set(TEXT.replace(".", " ").split()))
    backend = Tokenizer(models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(gpt2)
    rows = main(_args(gpt2.parent, "gpt2", tmp_path / "out2", "--methods", "l2", "--text-file",
                      str(gpt2 / "text.txt"), "--seq-len", "16"))
    log = (tmp_path / "out2" / "compare-local-0.3-gpt2" / "compare-local-0.3-gpt2.txt").read_text()
    assert "UTF-8 bytes" not in log and f"from {gpt2}" in log
    assert "Evaluation text (--text-file" in log and "4 chunks of 16 tokens" in log and float(rows[1]["ppl"]) > 1


def test_library_source_imports_nothing_of_ours_outside_projprune():
    """projprune is installed alone: no module of it may import the experiment packages."""
    import ast
    from pathlib import Path

    import projprune

    ours = {"engine", "scripts", "vit", "gpt2", "params", "benchmarks", "registry", "main", "tests"}
    offenders = []
    for path in Path(projprune.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in ours]
    assert offenders == []


def test_the_old_cli_names_point_to_their_new_home():
    import projprune.transformers.compare as lib

    with pytest.raises(AttributeError, match=r"engine\.hf_compare"):
        lib.main  # noqa: B018
    with pytest.raises(AttributeError, match=r"engine\.report\.markdown_table"):
        lib.markdown_table  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lib.nope  # noqa: B018
