"""engine/demo.py: the calibrated methods run on training images; bad widths are refused."""

from __future__ import annotations

import pytest

from engine.demo import DemoConfig, run


def test_demo_runs_calibrated_methods():
    rows = run(DemoConfig(hidden=32, epochs=3, methods="l2,calib,act_norm", calib_size=64))
    assert [r["method"] for r in rows] == ["l2", "calib", "act_norm"]
    assert all(r["params"] < 64 * 32 + 32 * 32 + 32 * 10 + 74 for r in rows)
    assert rows[1]["acc_after"] > 0.3


@pytest.mark.parametrize("kw, match", [({"hidden": 0}, "--hidden"), ({"calib_size": 0}, "--calib-size")])
def test_demo_bad_input_names_the_flag(kw, match):
    with pytest.raises(ValueError, match=match):
        run(DemoConfig(epochs=1, methods="calib", **kw))
