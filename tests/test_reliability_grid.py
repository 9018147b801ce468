"""scripts.grid names an unknown --models entry and lists the valid ones (issue 14, item 12)."""

from __future__ import annotations

import pytest

from scripts import grid


def test_unknown_model_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"--models 'nosuch': unknown model; valid: .*resnet20.*resnet56"):
        grid.main(["--dataset", "digits", "--dry-run", "--models", "nosuch"])


def test_known_model_still_plans(capsys, tmp_path):
    # a fresh output folder: finished runs elsewhere (./run) would be skipped, not planned
    assert grid.main(["--dataset", "digits", "--dry-run", "--models", "resnet20", "--output-dir", str(tmp_path)]) == 0
    assert "--model resnet20" in capsys.readouterr().out
