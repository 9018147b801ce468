"""`pip install .` installs the library alone: only `projprune`, importable with nothing of the experiments."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_clean_install_holds_only_projprune(tmp_path):
    # a copy of what the package is built from, so the build leaves nothing in the repository
    source = tmp_path / "src"
    shutil.copytree(ROOT / "projprune", source / "projprune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    # build with this environment's setuptools when it has one (offline); else pip fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                    "--target", str(target), str(source)], check=True, cwd=tmp_path)
    packages = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert packages == ["projprune"]
    # -I: isolated (no cwd, no PYTHONPATH, no user site); the experiments' packages must not be found
    code = ("import sys, importlib.util; sys.path.insert(0, sys.argv[1]); "
            "import projprune, projprune.transformers; "
            "assert projprune.__file__.startswith(sys.argv[1]), projprune.__file__; "
            "projprune.ProjectiveImportance; projprune.CompensatingPruner; "
            "print([m for m in ('engine', 'registry', 'vit', 'gpt2', 'params', 'scripts') "
            "if importlib.util.find_spec(m)])")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(target)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
