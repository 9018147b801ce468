"""The shared table writers and small helpers (engine/report.py, engine/harness.py)."""

from __future__ import annotations

import pytest
import torch

from engine.harness import count_params, num_threads, split_list
from engine.report import latex_escape, latex_table, markdown_table


def test_markdown_table_columns_headers_and_empty():
    assert markdown_table([{"a": 1, "b": "x"}, {"a": 2}]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2 |  |\n"
    assert markdown_table([{"a": 1, "b": 2}], columns=["b"], headers=["B"]) == "| B |\n|---|\n| 2 |\n"
    assert markdown_table([], empty="(no runs)\n") == "(no runs)\n"
    with pytest.raises(ValueError, match="headers"):
        markdown_table([{"a": 1}], headers=["x", "y"])


def test_latex_escape_and_table():
    assert latex_escape("a_b & 5% #1 {x} $") == r"a\_b \& 5\% \#1 \{x\} \$"
    assert latex_escape(r"a\b~c^d") == r"a\textbackslash{}b\textasciitilde{}c\textasciicircum{}d"
    text = latex_table([["x_1", 0.5]], ["name", "value"])
    assert text.splitlines() == [r"\begin{tabular}{lr}", r"\toprule", r"name & value \\", r"\midrule",
                                 r"x\_1 & 0.5 \\", r"\bottomrule", r"\end{tabular}"]
    with pytest.raises(ValueError, match="row 0"):
        latex_table([["only one"]], ["a", "b"])


def test_split_list():
    assert split_list(" a, b,,a ") == ["a", "b", "a"]
    assert split_list("a,b,a", unique=True) == ["a", "b"]
    assert split_list("1, 2", int) == [1, 2]
    assert split_list("") == [] and split_list(None) == []
    with pytest.raises(ValueError, match="--amounts"):
        split_list("1,x", int, name="--amounts")


def test_num_threads_restores_the_old_count():
    before = torch.get_num_threads()
    with num_threads(before + 1) as inside:
        assert inside == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), num_threads(before + 1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with num_threads(0) as inside:
        assert inside == before
    with pytest.raises(ValueError, match="threads"), num_threads(-2):
        pass


def test_count_params():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False))
    assert count_params(model) == 3 * 4 + 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 4 + 4 * 2


def test_markdown_table_of_cell_lists():
    assert markdown_table([[1, "x"]], columns=["a", "b"]) == "| a | b |\n|---|---|\n| 1 | x |\n"
    with pytest.raises(ValueError, match="columns"):
        markdown_table([[1, 2]])
    with pytest.raises(ValueError, match="cells"):
        markdown_table([[1]], columns=["a", "b"])


def test_one_evaluator_matches_a_plain_loop():
    from engine.classify import evaluate_accuracy, evaluate_classifier

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7)).double().train()
    x, y = torch.randn(23, 5, dtype=torch.float64), torch.randint(0, 7, (23,))
    logits = model(x).detach()
    top1 = sum(int(logits[i].argmax() == y[i]) for i in range(23)) / 23
    top5 = sum(int(y[i] in logits[i].topk(5).indices) for i in range(23)) / 23
    loss = sum(float(-torch.log_softmax(logits[i], 0)[y[i]]) for i in range(23)) / 23
    batches = list(zip(x.split(10), y.split(10)))
    result = evaluate_classifier(model, batches)
    assert result["images"] == 23 and result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["loss"] == pytest.approx(loss)
    assert evaluate_accuracy(model, x, y, batch_size=4) == pytest.approx(top1)
    assert model.training  # the training flag comes back
    assert evaluate_classifier(model, batches, max_batches=1)["images"] == 10
    with pytest.raises(ValueError, match="no batches"):
        evaluate_classifier(model, [])


def test_load_cached_is_the_one_cache_policy(tmp_path):
    from engine.harness import load_cached, save_checkpoint

    path = tmp_path / "m.safetensors"
    key = {"epochs": 2, "sizes": (3, 4)}
    assert load_cached(path, key) is None  # no file: train
    save_checkpoint(path, {"w": torch.ones(2)}, {"training": key, "acc": 0.5})
    state, meta = load_cached(path, key, key_field="training")
    assert torch.equal(state["w"], torch.ones(2)) and meta["acc"] == 0.5
    assert load_cached(path, key, retrain=True, key_field="training") is None  # retrain: train again
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"m\.safetensors was trained with other settings \(epochs differ\)"):
        load_cached(path, {**key, "epochs": 3}, key_field="training")
    assert path.read_bytes() == before


def test_small_vit_cache_refuses_other_settings(tmp_path):
    from vit.small import SmallViTConfig, load_or_train_small_vit, small_vit_checkpoint

    cfg = SmallViTConfig(epochs=1, num_layers=1, hidden_dim=16, mlp_dim=32, num_heads=2)
    trained = load_or_train_small_vit(tmp_path, 1, cfg)
    loaded = load_or_train_small_vit(tmp_path, 1, cfg)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="--retrain"):
        load_or_train_small_vit(tmp_path, 1, cfg.__class__(**{**cfg.__dict__, "epochs": 2}))
    load_or_train_small_vit(tmp_path, 1, cfg.__class__(**{**cfg.__dict__, "epochs": 2}), retrain=True)
    assert small_vit_checkpoint(tmp_path, 1).is_file()
