"""benchmarks/tp_examples.py: the example's inputs, the coverage mode and the summary lines (no large model)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import tp_examples


def test_inputs_follow_the_example_and_fresh_images_do_not_depend_on_the_calibration_count():
    example, calibration, fresh = tp_examples.make_inputs("fasterrcnn_mobilenet_v3_large_320_fpn", 0, 3, 2, seed=0)
    assert isinstance(example, list) and [tuple(x.shape) for x in example] == [(3, 300, 400), (3, 500, 400)]
    assert isinstance(calibration, list) and len(calibration) == 3 and len(fresh) == 2
    example, calibration, _ = tp_examples.make_inputs("retinanet_resnet50_fpn_v2", 0, 3, 2, seed=0)
    assert tuple(example.shape) == (1, 3, 224, 224) and tuple(calibration.shape) == (3, 3, 224, 224)  # a tensor
    assert tuple(tp_examples.make_inputs("inception_v3", 32, 1, 1, seed=0)[0].shape) == (1, 3, 75, 75)
    assert tuple(tp_examples.make_inputs("vit_b_32", 40, 1, 1, seed=0)[0].shape) == (1, 3, 64, 64)  # patch multiple
    _, few, fresh_few = tp_examples.make_inputs("resnet18", 16, 2, 3, seed=5)
    _, many, fresh_many = tp_examples.make_inputs("resnet18", 16, 6, 3, seed=5)
    assert torch.equal(fresh_few, fresh_many) and torch.equal(few, many[:2])
    assert not torch.equal(fresh_few, many[:3])


def test_relative_change_is_the_mean_of_per_sample_ratios():
    before = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    after = torch.tensor([[3.0, 5.0], [0.0, 0.0]], dtype=torch.float64)
    assert tp_examples.relative_change(after, before) == pytest.approx((1 / 5 + 1) / 2, rel=1e-12)
    assert math.isnan(tp_examples.relative_change(after[:, :1], before))  # shapes differ: no number


def test_summary_names_models_lost_where_magnitude_pruned_and_the_median_ratios():
    rows = [
        {"model": "a", "method": "magnitude", "status": "pruned", "time_s": "1.0", "change_fresh": "0.8"},
        {"model": "a", "method": "proj_calib", "status": "pruned", "time_s": "3.0", "change_fresh": "0.2"},
        {"model": "b", "method": "magnitude", "status": "pruned", "time_s": "2.0", "change_fresh": "0.5"},
        {"model": "b", "method": "proj_calib", "status": "ValueError: boom", "time_s": "0.1"},
        {"model": "c", "method": "magnitude", "status": "pruned", "time_s": "1.0", "change_fresh": "1.0"},
        {"model": "c", "method": "proj_calib", "status": "pruned", "time_s": "5.0", "change_fresh": "0.1"},
    ]
    lines = tp_examples.summarise(rows)
    assert "magnitude: pruned 3 of 3 models" in lines
    assert "proj_calib: pruned 2 of 3 models; failed where magnitude pruned: b" in lines
    assert "median proj_calib/magnitude change_fresh: 0.175 (max 0.250) over 2 models" in lines  # (.25 + .1) / 2
    assert "median proj_calib/magnitude time_s: 4.000 (max 5.000) over 2 models" in lines


def test_coverage_prunes_one_model_with_every_method_on_its_own_copy():
    cfg = tp_examples.TPExamplesConfig(methods="magnitude,proj_comp,proj_calib", input_size=32, batch=2, probe=1)
    rows = tp_examples.run_coverage("resnet18", ["magnitude", "proj_comp", "proj_calib"], cfg)
    assert [r["method"] for r in rows] == ["magnitude", "proj_comp", "proj_calib"]
    assert [r["status"] for r in rows] == ["pruned"] * 3 and all(float(r["time_s"]) >= 0 for r in rows)
    assert [("forward_s" in r) for r in rows] == [False, False, True] and float(rows[2]["forward_s"]) > 0


def test_coverage_starts_every_method_without_the_last_ones_pruner(monkeypatch):
    """A pruner is cyclic garbage (it and its dependency graph refer to each other): the coverage collects it
    before the next method's clock starts, so no method pays for an earlier one's (the cyclic collector's
    passes over gigabytes of it slowed the next graph build twofold)."""
    import gc
    import weakref

    alive = []  # weak references to every pruner built so far
    original = tp_examples.build_pruner

    def tracked(*args, **kwargs):
        assert not [ref for ref in alive if ref() is not None], "an earlier method's pruner is still alive"
        pruner = original(*args, **kwargs)
        pruner.cycle = pruner  # as a dependency graph's back references: only the cyclic collector frees it
        alive.append(weakref.ref(pruner))
        return pruner

    monkeypatch.setattr(tp_examples, "build_pruner", tracked)
    gc.disable()  # as between two automatic collections
    try:
        cfg = tp_examples.TPExamplesConfig(methods="magnitude,proj_comp", input_size=32, batch=2, probe=1)
        rows = tp_examples.run_coverage("resnet18", ["magnitude", "proj_comp"], cfg)
    finally:
        gc.enable()
    assert [r["status"] for r in rows] == ["pruned"] * 2 and len(alive) == 2


def test_bad_arguments_are_refused_before_any_run():
    with pytest.raises(ValueError, match="--models"):
        tp_examples.main(["--models", "resnet18,nope"])
    with pytest.raises(ValueError, match="--batch"):
        tp_examples.main(["--models", "resnet18", "--batch", "0"])
