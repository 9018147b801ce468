"""parse_logs, scripts.grid and benchmarks.cnn_one_shot end a bad argument with one line and exit 2 (issue 25.12),
and ``cnn_one_shot --skip-grid`` only tabulates (issue 25.13b)."""

from __future__ import annotations

import runpy
import sys

import pytest


def _run_as_main(module: str, argv: list[str], monkeypatch, capsys) -> str:
    """``python -m module argv`` in this process; returns its stderr after asserting exit code 2."""
    monkeypatch.setattr(sys, "argv", [module, *argv])
    monkeypatch.delenv("PROJPRUNE_TRACEBACK", raising=False)
    monkeypatch.delitem(sys.modules, module, raising=False)  # run it afresh as __main__ (no runpy warning)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_parse_logs_bad_arguments_are_one_line(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "run"
    runs.mkdir()
    assert "--runs" in _run_as_main("scripts.parse_logs", ["--runs", str(tmp_path / "nowhere")], monkeypatch, capsys)
    assert "--metric 'top5'" in _run_as_main("scripts.parse_logs", ["--runs", str(runs), "--metric", "top5"],
                                              monkeypatch, capsys)
    assert "--curves" in _run_as_main("scripts.parse_logs", ["--runs", str(runs), "--curves", "digits"],
                                      monkeypatch, capsys)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        err = _run_as_main("scripts.parse_logs", ["--runs", str(runs), "--out", str(out)], monkeypatch, capsys)
        assert f"{blocker} is a file" in err
    assert blocker.read_text() == "not a folder"


def test_grid_bad_arguments_are_one_line(monkeypatch, capsys):
    assert "--seeds" in _run_as_main("scripts.grid", ["--dataset", "digits", "--seeds", "1,x", "--dry-run"],
                                     monkeypatch, capsys)
    assert "nosuch" in _run_as_main("scripts.grid", ["--dataset", "digits", "--methods", "nosuch", "--dry-run"],
                                    monkeypatch, capsys)


def test_cnn_one_shot_unknown_method_is_one_line(tmp_path, monkeypatch, capsys):
    err = _run_as_main("benchmarks.cnn_one_shot", ["--output-dir", str(tmp_path / "o"), "--methods", "foo"],
                       monkeypatch, capsys)
    assert "--methods: unknown method(s) foo" in err and not (tmp_path / "o").exists()


def test_skip_grid_only_tabulates(tmp_path, monkeypatch, capsys):
    """No subprocess (grid, pretraining of the cost table's ResNet-56, seed runs) is started with --skip-grid."""
    from benchmarks import cnn_one_shot

    monkeypatch.setattr(cnn_one_shot.subprocess, "run", lambda *a, **k: pytest.fail(f"started {a[0][:4]}"))
    cnn_one_shot.main(["--output-dir", str(tmp_path), "--skip-grid"])
    text = (tmp_path / "one_shot.md").read_text()
    assert "Cost table skipped: no pretrained resnet56" in text
    assert "Recalibration noise skipped" in text and "Over seeds 1-5" in text
    assert "Validation choice" not in text  # it prunes: not run by a tabulation
