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
