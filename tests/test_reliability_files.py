"""Temp files of a killed write are cleaned up; a run directory is locked (issue 14, items 8 and 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from engine import harness

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_orphan_temp_of_a_killed_write_is_removed_on_the_next_write(tmp_path):
    target = tmp_path / "model.pth"
    # a process killed (SIGKILL) between writing its temp file and renaming it into place
    proc = _python(
        "import os, signal\n"
        "from engine import harness\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"harness.atomic_write_bytes({str(target)!r}, b'x' * 1000)\n")
    assert proc.wait(60) == -signal.SIGKILL
    orphans = list(tmp_path.glob(".model.pth.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    harness.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and not list(tmp_path.glob(".*.tmp"))


def test_temp_of_a_live_writer_is_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".model.pth.{harness._host()}.{sleeper.pid}.abc123.tmp"
        live.write_bytes(b"half")
        harness.atomic_write_bytes(tmp_path / "model.pth", b"new")
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    harness.atomic_write_bytes(tmp_path / "model.pth", b"newer")
    assert not live.exists()


# --------------------------------------------------------------------------- item 13: run-directory lock
import json  # noqa: E402

import pytest  # noqa: E402


def _lock_of(log: Path) -> Path:
    return log.parent / f".{log.stem}.lock"


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    log = tmp_path / "run" / "digits-resnet20.txt"
    log.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()  # a PID that has exited
    _lock_of(log).write_text(json.dumps({"pid": sleeper.pid, "host": harness._host()}))
    logger = harness.get_logger("stale-test", log, console=False)
    logger.info("hello")
    assert json.loads(_lock_of(log).read_text())["pid"] == os.getpid()
    harness.close_logger(logger)
    assert not _lock_of(log).exists()
    text = log.read_text()
    assert f"took over the stale lock of PID {sleeper.pid}" in text and "hello" in text


def test_live_lock_refuses_a_second_run(tmp_path):
    import main as main_module

    out = tmp_path / "out"
    log = out / "digits" / "pretrain" / "digits-resnet20.txt"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom engine import harness\n"
         f"harness.get_logger('holder', {str(log)!r}, console=False)\nprint('ready', flush=True)\ntime.sleep(120)\n"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        size = log.stat().st_size
        with pytest.raises(harness.RunLockedError, match=rf"PID {holder.pid} on {harness._host()}") as info:
            harness.get_logger("second", log, console=False)
        assert str(_lock_of(log)) in str(info.value)
        with pytest.raises(harness.RunLockedError):
            main_module.main(["--mode", "pretrain", "--dataset", "digits", "--model", "resnet20", "--width-mult",
                              "0.25", "--total-epochs", "1", "--output-dir", str(out)])
        assert log.stat().st_size == size and not list(log.parent.glob("*.pth"))  # nothing written
    finally:
        holder.kill()
        holder.wait()
    logger = harness.get_logger("second", log, console=False)  # the holder is gone: taken over
    harness.close_logger(logger)
    assert not _lock_of(log).exists()
