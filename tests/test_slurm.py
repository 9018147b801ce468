"""A real single-node SLURM (scripts/slurm_local.sh) runs the launchers' job arrays.

Needs root and the Debian SLURM packages (``.ci/install_slurm.sh``, which CI runs first); skipped,
saying why, only where they are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import gridrun
from tests.conftest import GRID_ARGS, GRID_METHODS, DigitsGrid

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (controller and slurmd), so a running cluster is left alone."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 60000:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports found")


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd in a fresh folder; yield the environment for client commands."""
    missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found; bash .ci/install_slurm.sh as root)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root; run the tests as root")
    folder = Path(tempfile.mkdtemp(prefix="projprune-slurm-", dir="/tmp"))
    folder.chmod(0o755)  # munged wants every parent of its socket traversable
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": str(_free_port_pair()),
           "SLURM_CONF": str(folder / "etc" / "slurm.conf"), "PYTHON": PY, "PYTHONPATH": str(ROOT),
           "PROJPRUNE_NO_TQDM": "1", "OMP_NUM_THREADS": "1", "SBATCH_GRES": "none",
           "SBATCH_OUTPUT": str(folder / "joblogs" / "%A_%a-%x.out")}
    for key in ("SLURM_JOB_ID", "GRID_BACKEND", "SBATCH_PARTITION", "SBATCH_TIMELIMIT"):
        env.pop(key, None)
    harness = ["bash", str(ROOT / "scripts" / "slurm_local.sh")]
    started = subprocess.run([*harness, "start"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, f"local SLURM did not start:\n{started.stdout}\n{started.stderr}"
        yield env
    finally:
        subprocess.run([*harness, "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _states(stderr: str) -> dict[str, str]:
    """``<job>_<index>: STATE ExitCode=a:b`` lines that gridrun prints after --wait."""
    return dict(re.findall(r"^(\d+_\d+): (\w+ ExitCode=\S+)$", stderr, re.MULTILINE))


def test_arrays_chain_and_report_failures(slurm_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ok.sh").write_text('echo "B done" > "$1"\n')
    tasks = [gridrun.Task(f"t{i}", ("bash", str(tmp_path / "ok.sh"), str(tmp_path / f"t{i}.log")),
                          str(tmp_path / f"t{i}.log"), "^B done$") for i in range(3)]
    failing = gridrun.Task("bad", ("bash", "-c", "exit 4"), str(tmp_path / "bad.log"))
    stages = [gridrun.Stage("one", tuple(tasks[:2])), gridrun.Stage("two", (tasks[2], failing))]
    task_file = gridrun.write_stages(tmp_path / "grid.json", stages)
    out = subprocess.run([PY, str(ROOT / "scripts" / "gridrun.py"), "submit", str(task_file), "--backend", "slurm",
                          "--wait", "--timeout", "90", "--log-dir", str(tmp_path)],
                         env=slurm_env, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # "bad" failed
    states = _states(out.stderr)
    assert len(states) == 4, out.stderr
    first, second = sorted({key.split("_")[0] for key in states}, key=int)
    assert states[f"{second}_1"] == "FAILED ExitCode=4:0"
    assert all(states[f"{first}_{i}"] == "COMPLETED ExitCode=0:0" for i in (0, 1))
    assert states[f"{second}_0"] == "COMPLETED ExitCode=0:0"
    job_log = Path(slurm_env["SBATCH_OUTPUT"]).parent / f"{second}_1-grid-two.out"
    assert "FAILED with exit code 4" in job_log.read_text()
    assert all((tmp_path / f"t{i}.log").read_text() == "B done\n" for i in range(3))
    assert f"after afterok:{first}" in out.stderr  # the second array waited for the first


def test_digits_grid_as_job_array(slurm_env: dict[str, str], tmp_path: Path, digits_grid: DigitsGrid) -> None:
    # The pretraining comes from the bash run of the same grid (the digits_grid fixture), so its stage is
    # found done and only the pruning array is submitted; arrays with a pretraining stage and a dependency
    # are covered by test_arrays_chain_and_report_failures.
    shared = digits_grid
    assert shared.first.returncode == 0, shared.first.stderr
    runs, results = tmp_path / "run", tmp_path / "results"
    shutil.copytree(shared.runs / "digits" / "pretrain", runs / "digits" / "pretrain")
    args = ["--backend", "slurm", *GRID_ARGS, "--output-dir", str(runs), "--results", str(results),
            "--log-dir", str(tmp_path), "--timeout", "200"]
    command = ["bash", str(ROOT / "scripts" / "digits.sh"), *args]
    out = subprocess.run(command, env=slurm_env, capture_output=True, text=True, timeout=260)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "stage pretrain: all 1 task(s) done, nothing to submit" in out.stderr
    states = _states(out.stderr)
    assert len(states) == len(GRID_METHODS), out.stderr
    assert all(s == "COMPLETED ExitCode=0:0" for s in states.values()), out.stderr
    job_logs = sorted(Path(slurm_env["SBATCH_OUTPUT"]).parent.glob("*-digits-prune.out"))
    assert len(job_logs) == len(GRID_METHODS) and all(": done" in p.read_text() for p in job_logs)
    for method in GRID_METHODS:
        name = f"digits-global-{method}-2.0-resnet20"
        log = (runs / "digits" / "prune" / name / f"{name}.txt").read_text()
        assert "Best Acc=" in log and f"method: {method}" in log
        assert f"{name}: done" in "".join(p.read_text() for p in job_logs)
    table = (results / "table_best_pruned.md").read_text()
    assert "| MagnitudeL2 |" in table and "| Projective-SL |" in table
    assert "Digits RN20 2×" in out.stdout  # the table is printed at the end
    # submitting again finds everything done and submits nothing
    again = subprocess.run(command, env=slurm_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "submitted" not in again.stderr, again.stderr
    assert "stage prune: all 2 task(s) done, nothing to submit" in again.stderr
