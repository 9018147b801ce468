"""benchmarks/readme.py: README sections between markers are rewritten from what the commands print."""

from __future__ import annotations

import pytest

from benchmarks import readme

TEXT = "intro\n<!-- readme:demo:begin -->\nold table\n<!-- readme:demo:end -->\noutro\n"


def test_replace_section_rewrites_only_the_marked_lines():
    new = readme.replace_section(TEXT, "demo", "| a |\n|---|\n| 1 |\n")
    assert new == "intro\n<!-- readme:demo:begin -->\n| a |\n|---|\n| 1 |\n<!-- readme:demo:end -->\noutro\n"
    assert readme.replace_section(new, "demo", "old table") == TEXT
    with pytest.raises(ValueError, match="readme:vit:begin"):
        readme.replace_section(TEXT, "vit", "x")


def test_main_writes_checks_and_refuses_bad_arguments(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(readme.SECTIONS, "demo", lambda out: calls.append(out) or "fresh\n")
    path = tmp_path / "README.md"
    path.write_text(TEXT)
    with pytest.raises(SystemExit) as info:
        readme.main(["--readme", str(path), "--sections", "demo", "--check"])
    assert info.value.code == 1 and path.read_text() == TEXT  # --check writes nothing
    readme.main(["--readme", str(path), "--sections", "demo", "--output-dir", str(tmp_path / "o")])
    assert path.read_text() == TEXT.replace("old table", "fresh")
    readme.main(["--readme", str(path), "--sections", "demo", "--check"])  # now up to date: no exit
    assert "fresh" in capsys.readouterr().out and len(calls) == 3
    with pytest.raises(ValueError, match="--sections"):
        readme.main(["--readme", str(path), "--sections", "nope"])
    with pytest.raises(FileNotFoundError, match="--readme"):
        readme.main(["--readme", str(tmp_path / "missing.md"), "--sections", "demo"])
    with pytest.raises(ValueError, match="readme:vit:begin"):  # markers checked before anything runs
        readme.main(["--readme", str(path), "--sections", "demo,vit"])
    assert len(calls) == 3


def test_bold_best_and_fraction():
    assert readme._fraction(0.97777, 4) == ".9778" and readme._fraction(1.0, 3) == "1.000"
    assert readme._bold_best([0.5, 0.98, 0.98], 2) == [".50", "**.98**", "**.98**"]
