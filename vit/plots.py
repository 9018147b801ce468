"""Figures of the ViT experiments (PNG + PDF through the harness), shared by ``main`` and ``parse``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.harness import save_figure  # noqa: E402

__all__ = ["plot_adaptive", "plot_norms", "plot_uniform"]

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _lines(series: Series, xlabel: str, ylabel: str, title: str, stem: str | os.PathLike) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.get_cmap("tab20").colors
    styles = ("-", "--", "-.", ":")
    for index, (name, (xs, ys)) in enumerate(sorted(series.items())):
        # 18 methods: 20 distinct colours, and line styles as a second cue
        ax.plot(xs, ys, marker=".", label=name, color=colours[(index * 2) % 20 + (index * 2 // 20) % 2],
                linestyle=styles[index % len(styles)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    save_figure(fig, stem)
    plt.close(fig)


def plot_uniform(series: Series, title: str, stem: str | os.PathLike) -> None:
    """Top-1 against removed MLP units per layer, one line per method: ``{method: (amounts, top1)}``."""
    _lines(series, "removed units per MLP layer", "top-1", title, stem)


def plot_adaptive(series: Series, title: str, stem: str | os.PathLike) -> None:
    """Top-1 against parameters (millions) along the accepted adaptive steps: ``{method: (params_m, top1)}``."""
    _lines(series, "parameters (M)", "top-1", title, stem)


def plot_norms(rows: Sequence[Mapping[str, float]], title: str, stem: str | os.PathLike) -> None:
    """Per-layer distributions of ``‖w_i‖``, ``|b_i|``, ``‖v_i‖``, projection distance, and distance vs ``‖w_i‖``."""
    layers = sorted({int(row["layer"]) for row in rows})
    columns = {"w_norm": "‖W row‖", "b_abs": "|b|", "v_norm": "‖V column‖", "distance": "projection distance"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label) in zip(axes.flat, columns.items()):
        ax.boxplot([[float(r[key]) for r in rows if int(r["layer"]) == layer] for layer in layers],
                   tick_labels=[str(layer) for layer in layers], showfliers=False)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    for key, ax in (("w_norm", axes.flat[4]), ("v_norm", axes.flat[5])):
        for layer in layers:
            picked = [r for r in rows if int(r["layer"]) == layer]
            ax.scatter([float(r[key]) for r in picked], [float(r["distance"]) for r in picked], s=3,
                       alpha=0.5, label=str(layer))
        ax.set_xlabel(columns[key])
        ax.set_ylabel("projection distance")
    axes.flat[5].legend(title="layer", fontsize=6, markerscale=3, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, stem)
    plt.close(fig)
