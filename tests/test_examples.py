"""examples/: each program runs with its --quick flag, prints what it promises, and writes only where told.

The README's snippet is the core of examples/prune_layer_pair.py: the test checks they are the same text.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, environment

EXAMPLES = ROOT / "examples"


def run_example(name: str, output_dir: Path, *args: str) -> str:
    """``python examples/<name> --quick --output-dir <output_dir> ...`` from the repository root; its stdout."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--output-dir", str(output_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, env=environment(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {output_dir}" in proc.stdout  # says where it wrote
    return proc.stdout


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def between(text: str, begin: str, end: str) -> str:
    match = re.search(re.escape(begin) + r"\n(.*?)\n[ \t]*" + re.escape(end), text, re.DOTALL)
    assert match, f"{begin} ... {end} not found"
    return match.group(1)


def test_readme_snippet_is_the_layer_pair_example():
    example = (EXAMPLES / "prune_layer_pair.py").read_text(encoding="utf-8")
    core = textwrap.dedent(between(example, "# --- README snippet begin ---", "# --- README snippet end ---"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```python\n{core}\n```" in readme
    assert "prune_pair(fc1, fc2, 64, \"calib\", stats=stats)" in core


@pytest.mark.slow
def test_prune_layer_pair(tmp_path):
    out = run_example("prune_layer_pair.py", tmp_path)
    # the snippet: 256 -> 192 -> 128 units
    assert "Linear(in_features=64, out_features=128, bias=True) Linear(in_features=128, out_features=10" in out
    accuracies = dict(re.findall(r"^ *(\w+): fc1 \(128, 64\), fc2 \(10, 128\), test accuracy (0\.\d+)", out, re.M))
    assert set(accuracies) == {"random", "l2", "proj550", "exact_oac", "act_norm", "calib"}, out
    before = float(re.search(r"test accuracy (0\.\d+); removing 128 of 256", out).group(1))
    assert before > 0.5 and all(0.1 < float(a) <= 1 for a in accuracies.values())
    state = torch.load(tmp_path / "mlp_calib.pt", weights_only=True)
    assert state["0.weight"].shape == (128, 64) and state["2.weight"].shape == (10, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp_calib.pt"]  # no temporary file left


@pytest.mark.slow
def test_prune_torchvision_cnn(tmp_path):
    out = run_example("prune_torchvision_cnn.py", tmp_path)
    base_macs, base_params = map(float, re.search(r"([\d.]+) M MACs, ([\d.]+) M parameters", out).groups())
    rows = re.findall(r"^(\S+) \+ .*?: ([\d.]+) M MACs \(([\d.]+)x fewer\), ([\d.]+) M parameters, "
                      r"relative output change ([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["CompensatingPruner", "MagnitudePruner"], out
    change = {}
    for name, macs, reached, params, rel in rows:
        assert float(reached) >= 2.0 and float(macs) <= base_macs / 2 + 0.1 and float(params) < base_params
        change[name] = float(rel)
    # folding the removed channels into their readers keeps the outputs far closer than magnitude pruning
    assert change["CompensatingPruner"] < 0.7 * change["MagnitudePruner"], out
    assert float(re.search(r"max \|difference\| to the pruned model (\S+)", out).group(1)) == 0.0
    import torchvision

    import projprune as pp

    saved = torch.load(tmp_path / "resnet18_compensated.pt", weights_only=True)  # no pickled module
    model = pp.adapt_to_shapes(torchvision.models.resnet18(num_classes=10), saved["shapes"]).eval()
    model.load_state_dict(saved["state_dict"])
    assert model.fc.in_features < 512 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_prune_hf_ffn(tmp_path):
    out = run_example("prune_hf_ffn.py", tmp_path)
    assert "tiny random BERT: FFN widths 256 -> [179, 179]" in out  # 256 - round(0.3 * 256)
    cosine = {m: float(v) for m, v in re.findall(r"^ *(calib|l2): cosine .*?: mean ([\d.]+)", out, re.M)}
    assert set(cosine) == {"calib", "l2"} and cosine["calib"] > cosine["l2"] + 0.02, out
    difference = float(re.search(r"max \|difference\| to the pruned model (\S+)", out).group(1))
    assert difference <= 1e-5
    assert (tmp_path / "pruned" / "config.json").is_file() and not (tmp_path / "pruned.tmp").exists()


def test_hf_example_refuses_a_missing_model_directory_before_writing(tmp_path):
    pytest.importorskip("transformers")
    example = load_example("prune_hf_ffn.py")
    with pytest.raises(FileNotFoundError, match="--model"):
        example.main(["--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_cnn_and_pair_examples_refuse_bad_arguments(tmp_path):
    pytest.importorskip("torch_pruning")
    with pytest.raises(ValueError, match="--speed-up"):
        load_example("prune_torchvision_cnn.py").main(["--speed-up", "1", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--model"):
        load_example("prune_torchvision_cnn.py").main(["--model", "nope", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--ratio"):
        load_example("prune_layer_pair.py").main(["--ratio", "1", "--output-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_every_python_snippet_of_the_docs_runs(document, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("transformers")
    snippets = re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(encoding="utf-8"), re.DOTALL)
    assert snippets, f"{document} has no python snippet"
    monkeypatch.chdir(tmp_path)  # anything a snippet writes stays out of the repository
    for index, code in enumerate(snippets):
        exec(compile(code, f"{document} snippet {index}", "exec"), {"__name__": "__main__"})  # raises if broken
    assert not any(tmp_path.iterdir())
    printed = capsys.readouterr().out
    if document == "docs/api.md":  # the shapes the comments promise
        assert "724 724 724" in printed and "20 20 20" in printed and "[90, 90]" in printed and "True" in printed
