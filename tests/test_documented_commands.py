"""Every command the documentation shows runs as written (issue 24, item 1).

The commands are collected at test time from README.md, docs/*.md, the per-directory READMEs
(vit/, gpt2/, params/, examples/, ...) and the docstrings of examples/*.py: every line of a shell
code block (```bash, ```sh, ```console or a plain ```) or of a 4-space-indented block, and every
inline code span, that starts a ``python``, ``bash``, ``torchrun`` or ``sbatch`` command. Each runs
in its ``--help`` form from the repository root, in a shell without PYTHONPATH (unless the line
sets it), so that the script-path forms (``python vit/main.py``) are checked as well as the ``-m``
ones; commands needing data, GPUs or a cluster are checked the same way (``torchrun ... main.py``
-> ``python main.py --help``).
Launchers that hand their flags to a Python grid get ``--help`` too; other shell scripts are only
syntax-checked (``bash -n``), since they would install or start things.

A Python entry point's ``--help`` must also import no heavy module (torch, transformers,
Torch-Pruning, torchvision): it answers before anything is loaded (examples, which a user copies
from, may import torch first; one without flags is only compiled here).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
INLINE_COMMAND = re.compile(r"`((?:[A-Z_][A-Z0-9_]*=\S* )*(?:python3?|bash|torchrun|sbatch) [^`\n]+)`")
HEAVY = ("torch", "transformers", "torch_pruning", "torchvision")
# Entry points whose --help may import heavy modules, and why (each is a module the CLI helper does not own
# or whose flags are defined next to its torch models).
HEAVY_HELP = {
    "benchmarks.cnn_one_shot": "imports torch at module level (owned by the digits benchmark)",
}


@dataclass(frozen=True)
class Check:
    """A documented command turned into what the test runs."""

    source: str  # file:line where it is documented
    written: str  # the command as documented
    argv: tuple[str, ...]  # what runs (python replaced by this interpreter)
    env: tuple[tuple[str, str], ...]  # the line's VAR=value assignments
    entry: str | None  # the Python entry point (``vit.main``), for the import check; None for shell scripts

    @property
    def key(self) -> str:
        return " ".join(self.argv[1:] if self.argv[0] == sys.executable else self.argv)


def _documents() -> list[Path]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md")),
             *sorted((ROOT / "examples").glob("**/*.md")), *sorted((ROOT / "examples").glob("**/*.py"))]
    return [p for p in dict.fromkeys(paths) if p.is_file() and ".venv" not in p.parts]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of shell-block and indented-block lines, continuations joined, heredocs skipped."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":  # an example's module docstring holds its command lines (indented)
        import ast

        text = ast.get_docstring(ast.parse(text)) or ""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    in_fence, shell_fence, i = False, False, 0
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if match:
            in_fence, shell_fence = (not in_fence, match[2].lower() in SHELL_LANGS) if not in_fence else (False, False)
            i += 1
            continue
        if (in_fence and shell_fence) or (not in_fence and line.startswith("    ")):
            start, command = i + 1, line.strip()
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", command)
            if heredoc:  # its body is input, not commands
                while i + 1 < len(lines) and lines[i + 1].strip() != heredoc[1]:
                    i += 1
                i += 1
            out.append((start, command.removeprefix("$ ")))
        elif not in_fence:
            out += [(i + 1, span) for span in INLINE_COMMAND.findall(line)]
        i += 1
    return out


def _split(command: str) -> list[list[str]]:
    """Shell words of each simple command of a line (``&&``, ``||``, ``;``, ``|`` separate them)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # prose in an indented block
        return []
    parts, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|", "&"):
            parts.append(current)
            current = []
        elif word.endswith(";"):
            current.append(word[:-1])
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [p for p in [*parts, current] if p]


def _module_of(script: str) -> str:
    return script.removesuffix(".py").replace("/", ".")


def _top_level_names() -> set[str]:
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} | {p.stem for p in ROOT.glob("*.py")}


def _python_check(words: list[str], source: str, written: str, env: dict) -> Check | None:
    """``python [-X ...] (-m module | script.py) args`` -> its --help form; None for other Python commands."""
    args = words[1:]
    while args and args[0] in ("-u", "-O", "-B", "-X", "-W"):
        args = args[2:] if args[0] in ("-X", "-W") else args[1:]
    if not args or args[0] in ("-", "-c") or args[0].startswith("<"):
        return None  # a heredoc or a one-liner: not an entry point
    if args[0] == "-m":
        module = args[1] if len(args) > 1 else ""
        if module.split(".")[0] not in _top_level_names():
            return None  # venv, pip, pytest, ...: not this repository's
        return Check(source, written, (sys.executable, "-m", module, "--help"), tuple(env.items()), module)
    script = args[0]
    if not script.endswith(".py"):
        return None
    path = ROOT / script
    if script.startswith("examples/") and path.is_file() and not re.search(r"argparse|parse_config", path.read_text()):
        # an example without flags would run in full: it must compile (the examples' own test runs them)
        return Check(source, written, (sys.executable, "-m", "py_compile", script), tuple(env.items()), None)
    return Check(source, written, (sys.executable, script, "--help"), tuple(env.items()), _module_of(script))


def _bash_check(script: str, rest: list[str], source: str, written: str, env: dict) -> Check:
    """A launcher that hands its flags to a Python grid answers --help; other scripts get ``bash -n``."""
    path = ROOT / script
    text = path.read_text() if path.is_file() else ""
    forwards = re.search(r'exec "\$\{PYTHON:-python\}" -m \S+', text) and '"$@"' in text
    if forwards:
        positional = []
        for word in rest:
            if word.startswith("-") or word.startswith("["):
                break
            positional.append(word)
        return Check(source, written, ("bash", script, *positional, "--help"), tuple(env.items()), None)
    return Check(source, written, ("bash", "-n", script), tuple(env.items()), None)


def collect() -> list[Check]:
    checks: dict[str, Check] = {}
    for path in _documents():
        for number, command in _code_lines(path):
            for words in _split(command):
                env = {}
                while words and ENV_ASSIGNMENT.match(words[0]):
                    name, _, value = words.pop(0).partition("=")
                    env[name] = value
                if not words:
                    continue
                source = f"{path.relative_to(ROOT)}:{number}"
                check = None
                if words[0] in ("python", "python3"):
                    check = _python_check(words, source, command, env)
                elif words[0] in ("bash", "sh") and len(words) > 1 and not words[1].startswith("-"):
                    check = _bash_check(words[1], words[2:], source, command, env)
                elif words[0] == "torchrun":  # the script it starts, on one process
                    script = next((w for w in words if w.endswith(".py")), None)
                    if script:
                        check = _python_check(["python", script], source, command, env)
                elif words[0] == "sbatch":
                    script = next((w for w in words[1:] if not w.startswith("-")), None)
                    if script:
                        check = _bash_check(script, [], source, command, env)
                if check is not None:
                    checks.setdefault(check.key, check)
    return list(checks.values())


CHECKS = collect()


def test_the_documentation_shows_commands():
    """The collector finds the documented entry points (a parser broken by a README rewrite fails here)."""
    keys = {check.key for check in CHECKS}
    assert len(CHECKS) >= 5, keys
    assert any(check.entry is not None for check in CHECKS)


def _run(check: Check) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(dict(check.env))
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", PROJPRUNE_NO_TQDM="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = list(check.argv)
    if check.entry is not None:  # record what --help imports (one "import time: ... | module" line each)
        argv[1:1] = ["-X", "importtime"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("check", CHECKS, ids=[check.key for check in CHECKS])
def test_documented_command_runs(check: Check):
    if check.argv[0] == sys.executable and check.argv[1] != "-m":
        assert (ROOT / check.argv[1]).is_file(), f"{check.source}: {check.argv[1]} does not exist ({check.written})"
    if check.argv[0] == "bash":
        script = check.argv[2] if check.argv[1] == "-n" else check.argv[1]
        assert (ROOT / script).is_file(), f"{check.source}: {script} does not exist ({check.written})"
    result = _run(check)
    stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    where = f"{check.source}: `{check.written}` as `{check.key}`"
    assert result.returncode == 0, f"{where} exited {result.returncode}:\n{stderr[-2000:]}"
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, f"{where}:\n{stderr[-2000:]}"
    if check.argv[-1] == "--help":
        assert "usage:" in result.stdout, f"{where} printed no usage:\n{result.stdout[-1000:]}"
        assert ":param" not in result.stdout and "``" not in result.stdout, f"{where}: raw reST in --help"
    if check.entry is not None and check.entry not in HEAVY_HELP and not check.entry.startswith("examples."):
        imported = {m for m in HEAVY if re.search(rf"\|\s+{m}$", result.stderr, re.M)}
        assert not imported, f"{where}: --help imported {sorted(imported)}; parse the flags before importing them"
