"""Run a grid of shell tasks sequentially under bash, or as SLURM job arrays, resuming finished ones.

Stdlib only, so any launcher (``scripts/``, ``vit/``, ``gpt2/``) can call it as a module
(``from scripts.gridrun import Task, run_stages``) or as a program
(``python scripts/gridrun.py ...``).

Interface
---------
A **task** is one command plus a completion check::

    Task(name="cifar10-global-l2-2.0-resnet56",           # unique, no spaces (SLURM log names)
         command=["python", "main.py", "--mode", "prune", ...],   # argv list, or a str run by bash -c
         done_path="run/cifar10/prune/<name>/<name>.txt",  # the file a finished task leaves
         done_regex=r"Best Acc=",                          # optional; must occur in done_path
         done_check="scripts.parse_logs:run_finished")     # optional; "module:function" of done_path

A task is *done* when ``done_path`` exists, (if given) ``done_regex`` matches its text
(``re.MULTILINE``) and (if given) ``done_check`` -- a function named ``package.module:function``,
imported from the working directory, called with ``done_path`` -- returns True: a launcher lets
its log parser decide. Done tasks are skipped, so re-running or re-submitting a grid resumes it.

A **stage** is a named list of tasks; ``run_stages(stages, options)`` runs stages in order,
each depending on the previous one:

- ``backend="bash"``: tasks run one after another in this process's working directory
  (stdout/stderr to the console, or to ``<task_log_dir>/<name>.out``); a failed task is
  reported and the rest of its stage still runs, but later stages are not started.
  Returns exit code 0 only if every task ends done.
- ``backend="slurm"``: every stage with unfinished tasks becomes one job array (one task per
  array index, ``--array=0-(N-1)[%max_parallel]``); stage k+1 gets
  ``--dependency=afterok:<job of stage k>`` (stage 0 gets ``options.dependency`` if set).
  Each array task runs ``python scripts/gridrun.py exec <tasks.json> $SLURM_ARRAY_TASK_ID``,
  which skips the task if it is already done and fails if the command exits 0 without
  leaving its completion marker. The task list is written (atomically) to
  ``<log_dir>/grids/<job_name>-<stamp>.json`` before submission.
  ``#SBATCH`` headers: built-in defaults (``--gres=gpu:1``, ``--time=24:00:00``,
  ``--output=logs/%A_%a-%x.out``), then the ``#SBATCH`` lines of ``headers_from`` (a
  launcher file), then the environment: ``SBATCH_PARTITION``, ``SBATCH_GRES`` (``none`` for
  GPU-less machines), ``SBATCH_TIMELIMIT``, ``SBATCH_OUTPUT``, ``SBATCH_CPUS_PER_TASK``,
  ``SBATCH_MEM_PER_NODE``, ``SBATCH_ACCOUNT``, ``SBATCH_QOS`` (sbatch reads most of these
  natively too; applying them here makes ``--dry-run`` show what will be submitted).
  With ``wait=True`` it polls ``squeue`` until the arrays leave the queue and checks every
  task's state with ``scontrol show job``.
- ``backend="auto"`` (default; env ``GRID_BACKEND`` overrides): ``slurm`` when ``sbatch`` is
  on PATH, the controller answers ``scontrol ping`` and we are not already inside a SLURM
  job; otherwise ``bash`` (inside a job, the grid runs sequentially in that allocation).
- ``dry_run=True``: prints what would run (bash: one command per line, ``# done`` for skipped
  tasks; slurm: the batch script of every array) and runs nothing.

Command line::

    python scripts/gridrun.py submit TASKS.json [--backend auto|bash|slurm] [--dry-run]
        [--dependency afterok:JOBID] [--job-name NAME] [--headers-from FILE] [--log-dir logs]
        [--task-log-dir DIR] [--max-parallel N] [--wait] [--timeout S]
    python scripts/gridrun.py exec TASKS.json INDEX      # one array task (used by the batch script)
    python scripts/gridrun.py status TASKS.json          # done/pending per task

``TASKS.json`` is a JSON list of task objects (keys as in :class:`Task`), or JSON Lines (one
object per line, easy to write from bash), or ``{"stages": [{"name": ..., "tasks": [...]}]}``.
In slurm mode ``submit`` prints the job id of the last array on stdout (empty line when all
tasks are done), everything else goes to stderr, so ``JOB=$(python scripts/gridrun.py submit ...)``
chains grids.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HEADERS: dict[str, str] = {
    "gres": "gpu:1",
    "time": "24:00:00",
    "output": "logs/%A_%a-%x.out",
}
# sbatch option -> environment variable that overrides it (the same names sbatch reads itself,
# plus SBATCH_CPUS_PER_TASK, which sbatch does not read).
ENV_OVERRIDES: dict[str, str] = {
    "partition": "SBATCH_PARTITION",
    "gres": "SBATCH_GRES",
    "time": "SBATCH_TIMELIMIT",
    "output": "SBATCH_OUTPUT",
    "cpus-per-task": "SBATCH_CPUS_PER_TASK",
    "mem": "SBATCH_MEM_PER_NODE",
    "account": "SBATCH_ACCOUNT",
    "qos": "SBATCH_QOS",
}
# Headers that gridrun sets itself per array and must not be copied from a launcher file.
_OWN_HEADERS = {"array", "dependency", "job-name"}
_SHORT_OPTIONS = {"p": "partition", "t": "time", "o": "output", "e": "error", "c": "cpus-per-task", "G": "gpus",
                  "N": "nodes", "n": "ntasks", "A": "account", "q": "qos", "J": "job-name", "a": "array",
                  "d": "dependency", "C": "constraint"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+=-]+$")
_CHECK_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HEADER_RE = re.compile(r"^#SBATCH\s+--?([A-Za-z-]+)(?:[=\s]\s*(.*?))?\s*$")


@dataclasses.dataclass(frozen=True)
class Task:
    """One grid entry: a command and the file (plus optional regex) that proves it finished."""

    name: str
    command: tuple[str, ...] | str
    done_path: str
    done_regex: str | None = None
    done_check: str | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"task name {self.name!r}: expected letters, digits and ._+=- only (no spaces)")
        if isinstance(self.command, list):
            object.__setattr__(self, "command", tuple(self.command))
        if not self.command:
            raise ValueError(f"task {self.name}: command is empty")
        if not self.done_path:
            raise ValueError(f"task {self.name}: done_path is empty (expected the file a finished run leaves)")
        if self.done_regex is not None:
            re.compile(self.done_regex)
        if self.done_check is not None and not _CHECK_RE.match(self.done_check):
            raise ValueError(f"task {self.name}: done_check {self.done_check!r}: expected package.module:function")

    def shell(self) -> str:
        """The command as one shell line (what ``--dry-run`` prints)."""
        return self.command if isinstance(self.command, str) else shlex.join(self.command)

    def is_done(self) -> bool:
        """True when ``done_path`` exists, contains ``done_regex`` and passes ``done_check`` (those given)."""
        path = Path(self.done_path)
        if not path.is_file():
            return False
        if self.done_regex is not None:
            text = path.read_text(errors="replace")
            if re.search(self.done_regex, text, re.MULTILINE) is None:
                return False
        return self.done_check is None or bool(resolve_check(self.done_check)(self.done_path))

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "command": self.command if isinstance(self.command, str) else list(self.command),
            "done_path": self.done_path,
            "done_regex": self.done_regex,
        }
        return out if self.done_check is None else {**out, "done_check": self.done_check}


def resolve_check(spec: str):
    """The function ``package.module:function`` names, imported with the working directory on the path
    (``python scripts/gridrun.py`` puts only ``scripts/`` there)."""
    module, _, function = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return getattr(importlib.import_module(module), function)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A named list of tasks; under SLURM one job array."""

    name: str
    tasks: tuple[Task, ...]


@dataclasses.dataclass
class GridOptions:
    """How to run a grid (see the module docstring)."""

    backend: str = "auto"
    dry_run: bool = False
    dependency: str | None = None
    job_name: str = "grid"
    headers_from: str | None = None
    log_dir: str = "logs"
    task_log_dir: str | None = None
    max_parallel: int | None = None
    wait: bool = False
    timeout: float = 86400.0
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "bash", "slurm"):
            raise ValueError(f"backend {self.backend!r}: expected auto, bash or slurm")
        if self.dependency is not None and not re.match(r"^[a-z]+(:\d+(_\d+)?)+$", self.dependency):
            raise ValueError(f"dependency {self.dependency!r}: expected e.g. afterok:12345")
        if not _NAME_RE.match(self.job_name):
            raise ValueError(f"job_name {self.job_name!r}: expected letters, digits and ._+=- only")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel {self.max_parallel}: expected a positive integer")


# --------------------------------------------------------------------------- task files
def tasks_from_obj(obj: object) -> list[Stage]:
    """Stages from parsed JSON: a task list (one stage), or ``{"stages": [...]}``."""
    if isinstance(obj, dict) and "stages" in obj:
        return [Stage(str(s["name"]), tuple(_task(t) for t in s["tasks"])) for s in obj["stages"]]
    if isinstance(obj, list):
        return [Stage("grid", tuple(_task(t) for t in obj))]
    raise ValueError("tasks: expected a JSON list of tasks or an object with a 'stages' list")


def _task(obj: object) -> Task:
    if not isinstance(obj, dict):
        raise ValueError(f"task {obj!r}: expected an object with name, command, done_path[, done_regex, done_check]")
    unknown = set(obj) - {"name", "command", "done_path", "done_regex", "done_check"}
    if unknown or not {"name", "command", "done_path"} <= set(obj):
        raise ValueError(f"task {obj!r}: expected keys name, command, done_path and optionally done_regex, "
                         "done_check")
    return Task(obj["name"], obj["command"], obj["done_path"], obj.get("done_regex"), obj.get("done_check"))


def load_stages(path: str | os.PathLike) -> list[Stage]:
    """Read a task file (JSON list, JSON Lines, or ``{"stages": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path} (expected JSON or JSON Lines task list)")
    text = path.read_text()
    try:
        return tasks_from_obj(json.loads(text))
    except json.JSONDecodeError:
        pass
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"task file {path}: neither JSON nor JSON Lines ({exc})") from exc
    return tasks_from_obj(rows)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_stages(path: str | os.PathLike, stages: Sequence[Stage]) -> Path:
    """Write stages as a task file readable by :func:`load_stages` (atomically)."""
    obj = {"stages": [{"name": s.name, "tasks": [t.to_dict() for t in s.tasks]} for s in stages]}
    _atomic_write(Path(path), json.dumps(obj, indent=1) + "\n")
    return Path(path)


def _check_unique(stages: Sequence[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        for task in stage.tasks:
            if task.name in seen:
                raise ValueError(f"task name {task.name!r} appears twice in the grid")
            seen.add(task.name)


# --------------------------------------------------------------------------- backends
def slurm_available() -> bool:
    """``sbatch`` on PATH and a controller that answers ``scontrol ping``."""
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and " is UP" in out.stdout


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``slurm`` or ``bash`` (env ``GRID_BACKEND`` wins over ``auto``)."""
    backend = os.environ.get("GRID_BACKEND", backend) if backend == "auto" else backend
    if backend not in ("auto", "bash", "slurm"):
        raise ValueError(f"GRID_BACKEND={backend!r}: expected auto, bash or slurm")
    if backend != "auto":
        return backend
    if os.environ.get("SLURM_JOB_ID"):
        return "bash"  # already inside an allocation: run the grid here, sequentially
    return "slurm" if slurm_available() else "bash"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_task(task: Task, task_log_dir: str | None = None) -> int:
    """Run one task (no done-check); returns its exit code."""
    argv = ["bash", "-c", task.command] if isinstance(task.command, str) else list(task.command)
    if task_log_dir is None:
        return subprocess.run(argv).returncode
    log = Path(task_log_dir) / f"{task.name}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        return subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT).returncode


def run_bash(stages: Sequence[Stage], options: GridOptions) -> int:
    """Run the stages sequentially; returns 0 only if every task ends done."""
    total = sum(len(s.tasks) for s in stages)
    index = 0
    for stage in stages:
        failed: list[str] = []
        for task in stage.tasks:
            index += 1
            if task.is_done():
                if options.dry_run:
                    print(f"# done, skipped: {task.name}")
                else:
                    _say(f"[{index}/{total}] {task.name}: already done, skipped")
                continue
            if options.dry_run:
                print(task.shell())
                continue
            _say(f"[{index}/{total}] {task.name}: running")
            start = time.perf_counter()
            code = run_task(task, options.task_log_dir)
            seconds = time.perf_counter() - start
            if code == 0 and task.is_done():
                _say(f"[{index}/{total}] {task.name}: done in {seconds:.1f} s")
            else:
                why = f"exit code {code}" if code else f"no completion marker in {task.done_path}"
                _say(f"[{index}/{total}] {task.name}: FAILED ({why}) after {seconds:.1f} s")
                failed.append(task.name)
        if failed:
            _say(f"stage {stage.name}: {len(failed)} task(s) failed: {', '.join(failed)}; later stages not run")
            return 1
    return 0


def read_headers(path: str | os.PathLike) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a launcher file (before its first command) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"headers_from: {path} not found (expected a launcher with #SBATCH lines)")
    headers: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            match = _HEADER_RE.match(stripped)
            if match is None:
                raise ValueError(f"{path}: cannot read header line {line!r}")
            key, value = match.group(1), match.group(2) or ""
            if len(key) == 1:
                if key not in _SHORT_OPTIONS:
                    raise ValueError(f"{path}: unknown short option -{key} in {line!r}; use the --long form")
                key = _SHORT_OPTIONS[key]
            if key not in _OWN_HEADERS:
                headers[key] = value
        elif stripped and not stripped.startswith("#"):
            break  # sbatch stops reading headers at the first command
    return headers


def effective_headers(options: GridOptions) -> dict[str, str]:
    """Defaults, then the launcher file's headers, then the environment overrides."""
    headers = dict(DEFAULT_HEADERS)
    if options.headers_from:
        headers.update(read_headers(options.headers_from))
    for key, env in ENV_OVERRIDES.items():
        if os.environ.get(env):
            headers[key] = os.environ[env]
    return headers


def batch_script(stage: Stage, task_file: Path, job_name: str, options: GridOptions, dependency: str | None) -> str:
    """The sbatch script of one stage's job array."""
    headers = effective_headers(options)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}"]
    lines += [f"#SBATCH --{key}={value}" if value else f"#SBATCH --{key}" for key, value in headers.items()]
    limit = f"%{options.max_parallel}" if options.max_parallel else ""
    lines.append(f"#SBATCH --array=0-{len(stage.tasks) - 1}{limit}")
    if dependency:
        lines.append(f"#SBATCH --dependency={dependency}")
    lines.append(f"# {len(stage.tasks)} task(s) of stage {stage.name}; written by scripts/gridrun.py")
    runner = Path(__file__).resolve()
    lines.append(f"cd {shlex.quote(os.getcwd())}")
    lines.append(
        f"exec {shlex.quote(options.python)} {shlex.quote(str(runner))} exec "
        f'{shlex.quote(str(task_file))} "$SLURM_ARRAY_TASK_ID"'
    )
    return "\n".join(lines) + "\n"


def submit_slurm(stages: Sequence[Stage], options: GridOptions) -> tuple[int, list[str]]:
    """Submit one array per stage with unfinished tasks, chained by ``afterok``; returns (rc, job ids)."""
    dependency = options.dependency
    job_ids: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    output_dir = Path(effective_headers(options).get("output", "")).parent
    for stage in stages:
        pending = tuple(t for t in stage.tasks if not t.is_done())
        skipped = len(stage.tasks) - len(pending)
        if not pending:
            _say(f"stage {stage.name}: all {skipped} task(s) done, nothing to submit")
            continue
        job_name = f"{options.job_name}-{stage.name}"
        todo = Stage(stage.name, pending)
        task_file = Path(options.log_dir).resolve() / "grids" / f"{job_name}-{stamp}.json"
        script = batch_script(todo, task_file, job_name, options, dependency)
        if options.dry_run:
            print(f"# stage {stage.name}: {len(pending)} task(s) to submit, {skipped} done")
            for i, task in enumerate(pending):
                print(f"# [{i}] {task.shell()}")
            print(script)
            job_ids.append(f"<{job_name}>")
            dependency = f"afterok:<{job_name}>"
            continue
        write_stages(task_file, [todo])
        if "%" not in str(output_dir):
            output_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder
        result = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
        if result.returncode != 0:
            _say(f"sbatch failed for stage {stage.name} (exit {result.returncode}):\n{result.stderr.strip()}")
            return 1, job_ids
        job_id = result.stdout.strip().split(";")[0]
        _say(f"stage {stage.name}: submitted array job {job_id} ({len(pending)} task(s), {skipped} done)"
             + (f", after {dependency}" if dependency else ""))
        job_ids.append(job_id)
        dependency = f"afterok:{job_id}"
    return 0, job_ids


def job_states(job_id: str) -> dict[str, str]:
    """``{"<job>_<index>": "COMPLETED", ...}`` from ``scontrol show job -o`` (kept ~5 min after the end)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        key = f"{fields.get('ArrayJobId', fields.get('JobId', job_id))}_{fields.get('ArrayTaskId', '')}"
        states[key] = f"{fields.get('JobState', '?')} ExitCode={fields.get('ExitCode', '?')}"
    return states


def wait_for_jobs(job_ids: Sequence[str], timeout: float, poll: float = 0.5) -> tuple[bool, dict[str, str]]:
    """Poll ``squeue`` until the jobs leave the queue; returns (all tasks COMPLETED, states)."""
    start = time.monotonic()
    for job_id in job_ids:
        while True:
            queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
            if not queued.stdout.strip():
                break
            if time.monotonic() - start > timeout:
                _say(f"timeout after {timeout:.0f} s waiting for job {job_id}:\n{queued.stdout}")
                subprocess.run(["scancel", *job_ids], capture_output=True)
                return False, {}
            time.sleep(poll)
    states: dict[str, str] = {}
    for job_id in job_ids:
        states.update(job_states(job_id))
    complete = bool(states) and all(s.startswith("COMPLETED") for s in states.values())
    return complete, states


def run_stages(stages: Sequence[Stage], options: GridOptions) -> int:
    """Run or submit the stages (see the module docstring); returns a process exit code."""
    _check_unique(stages)
    backend = resolve_backend(options.backend)
    if backend == "bash":
        return run_bash(stages, options)
    code, job_ids = submit_slurm(stages, options)
    if not options.dry_run:
        print(job_ids[-1] if job_ids else "", flush=True)
    if code or options.dry_run or not options.wait or not job_ids:
        return code
    complete, states = wait_for_jobs(job_ids, options.timeout)
    for key, state in sorted(states.items()):
        _say(f"{key}: {state}")
    missing = [t.name for s in stages for t in s.tasks if not t.is_done()]
    if missing:
        _say(f"{len(missing)} task(s) not done: {', '.join(missing)}")
    return 0 if complete and not missing else 1


def exec_task(task_file: str | os.PathLike, index: int) -> int:
    """Run task ``index`` of a task file (one SLURM array task); 0 only if it ends done."""
    tasks = [t for s in load_stages(task_file) for t in s.tasks]
    if not 0 <= index < len(tasks):
        raise ValueError(f"index {index}: expected 0..{len(tasks) - 1} for {task_file}")
    task = tasks[index]
    if task.is_done():
        _say(f"{task.name}: already done ({task.done_path}), skipped")
        return 0
    _say(f"{task.name}: {task.shell()}")
    code = run_task(task)
    if code != 0:
        _say(f"{task.name}: FAILED with exit code {code}")
        return code
    if not task.is_done():
        what = "does not show a finished run" if Path(task.done_path).is_file() else "was not written"
        _say(f"{task.name}: exited 0 but its completion file {task.done_path} {what}")
        return 1
    _say(f"{task.name}: done")
    return 0


# --------------------------------------------------------------------------- command line
def add_grid_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The :class:`GridOptions` flags (shared by launchers that build their own task lists)."""
    parser.add_argument("--backend", default="auto", choices=("auto", "bash", "slurm"),
                        help="slurm: job arrays; bash: sequential here; auto: slurm if a controller answers")
    parser.add_argument("--dry-run", action="store_true", help="print the commands / batch scripts only")
    parser.add_argument("--dependency", default=None, help="first array waits for this, e.g. afterok:123")
    parser.add_argument("--job-name", default=None, help="SLURM job name prefix")
    parser.add_argument("--headers-from", default=None, help="launcher file whose #SBATCH lines to use")
    parser.add_argument("--log-dir", default="logs", help="task files go to <log-dir>/grids/")
    parser.add_argument("--task-log-dir", default=None, help="bash backend: per-task output files here")
    parser.add_argument("--max-parallel", type=int, default=None, help="array throttle (%%N)")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the arrays and check states")
    parser.add_argument("--timeout", type=float, default=86400.0, help="seconds for --wait")
    return parser


def options_from_args(args: argparse.Namespace, default_job_name: str = "grid") -> GridOptions:
    """A :class:`GridOptions` from the flags of :func:`add_grid_arguments`."""
    return GridOptions(
        backend=args.backend, dry_run=args.dry_run, dependency=args.dependency,
        job_name=args.job_name or default_job_name, headers_from=args.headers_from, log_dir=args.log_dir,
        task_log_dir=args.task_log_dir, max_parallel=args.max_parallel, wait=args.wait, timeout=args.timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    submit = add_grid_arguments(sub.add_parser("submit", help="run or submit a task file"))
    submit.add_argument("tasks")
    run_one = sub.add_parser("exec", help="run one task of a task file (SLURM array task)")
    run_one.add_argument("tasks")
    run_one.add_argument("index", type=int)
    status = sub.add_parser("status", help="print done/pending per task")
    status.add_argument("tasks")
    args = parser.parse_args(argv)
    if args.cmd == "exec":
        return exec_task(args.tasks, args.index)
    stages = load_stages(args.tasks)
    if args.cmd == "status":
        for stage in stages:
            for task in stage.tasks:
                print(f"{stage.name}\t{task.name}\t{'done' if task.is_done() else 'pending'}")
        return 0
    return run_stages(stages, options_from_args(args, default_job_name=Path(args.tasks).stem))


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python scripts/gridrun.py exec ...` (SLURM tasks): engine from this repository
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine.harness import run_cli

    run_cli(lambda: sys.exit(main()), prog="python -m scripts.gridrun")
