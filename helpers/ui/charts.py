"""Charts as pictures (PIL images) for notebooks and reports: loss curves, fidelity bars, histograms.

Rendered with matplotlib's Agg backend into a PNG, so they display in any frontend (``display(img)``), save
beside a report, and never need a GUI or an interactive backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, thread-safe enough

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str = "", xlabel: str = "",
               ylabel: str = "", logy: bool = False) -> Image.Image:
    """One line per named series of (x, y) points."""
    fig, ax = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name, linewidth=1.4)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _to_image(fig)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str = "", xlabel: str = "",
              ylabel: str = "", horizontal: bool | None = None, band: tuple[float, float] | None = None,
              line: float | None = None, colours: Sequence[str] | None = None) -> Image.Image:
    """Bars with their labels; long label lists are drawn horizontally so names stay readable. ``band`` shades a
    value range (a target), ``line`` marks one value (a mean), ``colours`` sets each bar's colour."""
    horizontal = len(labels) > 12 if horizontal is None else horizontal
    height = max(3.0, 0.22 * len(labels) + 1.2) if horizontal else 3.6
    fig, ax = _figure(7.5, min(height, 40.0))
    colour = list(colours) if colours else "#4c72b0"
    if band is not None:
        (ax.axvspan if horizontal else ax.axhspan)(*band, color="#55a868", alpha=0.15, zorder=0)
    if line is not None:
        (ax.axvline if horizontal else ax.axhline)(line, color="#55a868", linestyle="--", linewidth=1)
    if horizontal:
        ax.barh(range(len(values)), values, color=colour)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=title, xlabel=ylabel or xlabel)
    else:
        ax.bar(range(len(values)), values, color=colour)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 5 else 0, ha="right", fontsize=8)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return _to_image(fig)


def histogram(values: Sequence[float], bins: int | Sequence[float] = 20, title: str = "", xlabel: str = "",
              ylabel: str = "count") -> Image.Image:
    fig, ax = _figure()
    ax.hist(list(values), bins=bins, color="#55a868", edgecolor="white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    return _to_image(fig)
