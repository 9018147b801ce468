"""benchmarks/readme.py: docs/results.md sections between markers are rewritten from what the commands print."""

from __future__ import annotations

import re

import pytest

from benchmarks import readme
from tests.conftest import ROOT

TEXT = "intro\n<!-- results:demo:begin -->\nold table\n<!-- results:demo:end -->\noutro\n"


def test_replace_section_rewrites_only_the_marked_lines():
    new = readme.replace_section(TEXT, "demo", "| a |\n|---|\n| 1 |\n")
    assert new == "intro\n<!-- results:demo:begin -->\n| a |\n|---|\n| 1 |\n<!-- results:demo:end -->\noutro\n"
    assert readme.replace_section(new, "demo", "old table") == TEXT
    with pytest.raises(ValueError, match="results:vit:begin"):
        readme.replace_section(TEXT, "vit", "x")
    with pytest.raises(ValueError, match="results:demo:begin"):  # two blocks of one section are ambiguous
        readme.replace_section(TEXT + TEXT, "demo", "x")


def test_main_writes_checks_and_refuses_bad_arguments(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(readme.SECTIONS, "demo", lambda out: calls.append(out) or "fresh\n")
    path = tmp_path / "results.md"
    path.write_text(TEXT)
    with pytest.raises(SystemExit) as info:
        readme.main(["--results", str(path), "--sections", "demo", "--check"])
    assert info.value.code == 1 and path.read_text() == TEXT  # --check writes nothing
    readme.main(["--results", str(path), "--sections", "demo", "--output-dir", str(tmp_path / "o")])
    assert path.read_text() == TEXT.replace("old table", "fresh")
    readme.main(["--results", str(path), "--sections", "demo", "--check"])  # now up to date: no exit
    assert "fresh" in capsys.readouterr().out and len(calls) == 3
    with pytest.raises(ValueError, match="--sections"):
        readme.main(["--results", str(path), "--sections", "nope"])
    with pytest.raises(FileNotFoundError, match="--results"):
        readme.main(["--results", str(tmp_path / "missing.md"), "--sections", "demo"])
    with pytest.raises(ValueError, match="results:vit:begin"):  # markers checked before anything runs
        readme.main(["--results", str(path), "--sections", "demo,vit"])
    assert len(calls) == 3


def test_the_default_file_is_docs_results_with_every_regenerated_section():
    path = ROOT / "docs" / "results.md"
    text = path.read_text(encoding="utf-8")
    for name in readme.SECTIONS:  # each block present once, so the real run cannot fail on markers
        assert readme.replace_section(text, name, "x").count("\nx\n") == 1
        body = re.search(rf"<!-- results:{name}:begin -->\n(.*?)<!-- results:{name}:end -->", text, re.S).group(1)
        assert body.count("\n|") >= 5  # a table with a header, a rule and rows
    # the digits tables are placed by their own scripts; their markers must stay paired
    begins = re.findall(r"<!-- results:([\w-]+):begin -->", text)
    assert begins == re.findall(r"<!-- results:([\w-]+):end -->", text) and "digits-table1" in begins
    assert "<!-- readme:" not in (ROOT / "README.md").read_text(encoding="utf-8")  # tables live in docs/results.md


def test_bold_best_and_fraction():
    assert readme._fraction(0.97777, 4) == ".9778" and readme._fraction(1.0, 3) == "1.000"
    assert readme._bold_best([0.5, 0.98, 0.98], 2) == [".50", "**.98**", "**.98**"]
