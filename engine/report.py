"""Result tables: the one Markdown and LaTeX table writer every CLI and benchmark uses."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["latex_escape", "latex_table", "markdown_table"]


def _columns(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    if any(not isinstance(row, Mapping) for row in rows):
        raise ValueError("columns: required when rows are lists of cells rather than dicts")
    return list(dict.fromkeys(key for row in rows for key in row))


def _cells(row: Mapping[str, Any] | Sequence[Any], columns: Sequence[str]) -> list[str]:
    if isinstance(row, Mapping):
        return [str(row.get(col, "")) for col in columns]
    if len(row) != len(columns):
        raise ValueError(f"rows: a row has {len(row)} cells, expected {len(columns)} (one per column)")
    return [str(cell) for cell in row]


def markdown_table(
    rows: Sequence[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[str] | None = None,
    headers: Sequence[str] | None = None,
    empty: str | None = None,
) -> str:
    """A GitHub Markdown table of ``rows`` (one dict per row, or one list of cells per row).

    Args:
        columns: keys to show, in order (default: every key, in first-seen order; required
            for rows given as lists of cells, which are shown in that order).
        headers: the header cells (default: the column keys).
        empty: returned as is when ``rows`` is empty (default: the header alone).
    """
    if not rows and empty is not None:
        return empty
    columns = _columns(rows, columns)
    headers = list(headers) if headers is not None else columns
    if len(headers) != len(columns):
        raise ValueError(f"headers: expected {len(columns)} cells (one per column), got {len(headers)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = re.compile(r"([&%$#_{}])")
_LATEX_WORDS = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``& % $ # _ { } \\ ~ ^``)."""
    out = []
    for char in str(text):
        if char in _LATEX_WORDS:
            out.append(_LATEX_WORDS[char])
        else:
            out.append(_LATEX_SPECIAL.sub(r"\\\1", char))
    return "".join(out)


def latex_table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str],
    align: str | None = None,
) -> str:
    """A booktabs ``tabular`` of ``rows`` (lists of cells, escaped here) under ``header``.

    ``align`` is the column spec (default: ``l`` then ``r`` for the rest).
    """
    align = align or "l" + "r" * (len(header) - 1)
    bad = [i for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        raise ValueError(f"rows: row {bad[0]} has {len(rows[bad[0]])} cells, expected {len(header)} (the header)")
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
