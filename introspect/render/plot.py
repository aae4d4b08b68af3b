"""Memory over time: RSS (and USS, and any other series) in MB with the least-squares trend line.

The chart every install draws is SVG, written here in plain text: a line chart needs no plotting
library, and matplotlib with its fonts and image libraries is about 95 MiB of a fresh install (the
whole tool without it is under 100 MiB). The report embeds the SVG; browsers, editors and ticket
systems show it. A PNG is drawn too where matplotlib is installed (``pip install
'introspect-agent[png]'``), imported lazily: it costs about half a second of start-up. On a
terminal, :func:`sparkline` shows the shape inline.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from introspect.trend import MIB, Trend

# Colours a reader tells apart in print and with the commonest colour-vision deficiencies
# (Okabe-Ito): blue, orange, green, purple, vermilion.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00")
WIDTH, HEIGHT = 900, 450
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50
BARS = "▁▂▃▄▅▆▇█"


def nice_ticks(lo: float, hi: float, want: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about ``want`` of them (1, 2, 2.5 or 5 times a power of
    10).

    >>> nice_ticks(0, 100)
    [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    >>> nice_ticks(51.8, 77.2)
    [50.0, 60.0, 70.0, 80.0]
    >>> nice_ticks(3.0, 3.0)
    [2.0, 2.5, 3.0, 3.5, 4.0]
    """
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / max(1, want - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t < hi + step * 0.999:
        ticks.append(float(round(t, 10)))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:,.1f}"


# The memory breakdown's parts (`introspect memory`), bottom to top, stacked under the RSS line at
# the looks that had a forked copy.
PARTS = (("python_objects", "Python objects"), ("allocator_free", "allocator free space"),
         ("native", "native"), ("rest", "stacks and the rest"))
PART_COLOURS = ("#009E73", "#D55E00", "#CC79A7", "#999999")


def part_values(mem: Mapping[str, Any]) -> dict[str, int]:
    """A breakdown's figures grouped as the chart shows them (unmeasured ones as 0).

    >>> part_values({"python_objects": 5, "pymalloc": {"free": 1}, "malloc": {"free": 2},
    ...              "native": 3, "stacks": 1, "other": None})
    {'python_objects': 5, 'allocator_free': 3, 'native': 3, 'rest': 1}
    """
    py = mem.get("pymalloc") or {}
    malloc = mem.get("malloc") or {}
    return {"python_objects": int(mem.get("python_objects") or 0),
            "allocator_free": int(py.get("free") or 0) + int(malloc.get("free") or 0),
            "native": int(mem.get("native") or 0),
            "rest": int(mem.get("stacks") or 0) + int(mem.get("other") or 0)}


def memory_svg(ts: Sequence[float], series: Sequence[tuple[str, Sequence[float | None]]],
               trend: Trend | None, title: str,
               parts: Sequence[tuple[float, Mapping[str, Any]]] | None = None) -> str:
    """The chart as an SVG document. ``series`` are (label, bytes per sample) pairs drawn in order,
    the first one the series the trend was fitted to; a None value leaves a gap.

    >>> svg = memory_svg([0, 1, 2], [("RSS", [MIB, 2 * MIB, 3 * MIB])], None, "pid 1 <x>")
    >>> svg.startswith("<svg") and "pid 1 &lt;x&gt;" in svg and svg.count("<polyline") == 1
    True
    """
    scale, unit = (60.0, "min") if ts and ts[-1] > 1200 else (1.0, "s")
    xs = [t / scale for t in ts]
    values = [v / MIB for _, vs in series for v in vs if v is not None]
    stacked: list[tuple[float, list[float]]] = []  # (x, cumulative MiB per part)
    for t, mem in parts or ():
        got = part_values(mem)
        cum, acc = [], 0.0
        for key, _ in PARTS:
            acc += got[key] / MIB
            cum.append(acc)
        stacked.append((t / scale, cum))
        values += [acc, 0.0]  # stacked areas start at zero
    if len(stacked) == 1:  # one look: a narrow band at its time
        half = 0.005 * ((xs[-1] - xs[0]) if len(xs) >= 2 else 1.0)
        stacked = [(stacked[0][0] - half, stacked[0][1]), (stacked[0][0] + half, stacked[0][1])]
    lines_mb: list[tuple[float, float]] = []
    if trend is not None and len(ts) >= 2:
        lines_mb = [
            (x, (trend.slope_bytes_per_s * t + trend.intercept) / MIB)
            for x, t in ((xs[0], ts[0]), (xs[-1], ts[-1]))
        ]
        values += [y for _, y in lines_mb]
    ylo, yhi = (min(values), max(values)) if values else (0.0, 1.0)
    yticks = nice_ticks(ylo, yhi)
    xticks = nice_ticks(xs[0], xs[-1]) if len(xs) >= 2 else [0.0, 1.0]
    y0, y1 = yticks[0], yticks[-1]
    x0, x1 = xticks[0], xticks[-1]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.0f}" y="22" text-anchor="middle" font-size="12">'
        f"{escape(title)}</text>",
    ]
    for y in yticks:
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
    for x in xticks:
        out.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{px(x):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{_fmt(x)}</text>'
        )
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(
        f'<text x="{LEFT + pw / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle">time ({unit})</text>'
    )
    out.append(
        f'<text transform="translate(16 {TOP + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
        "MB (MiB)</text>"
    )
    legend: list[tuple[str, str, str]] = []
    for k, (_, label) in enumerate(PARTS if stacked else ()):
        top = [f"{px(x):.1f},{py(cum[k]):.1f}" for x, cum in stacked]
        bottom = [f"{px(x):.1f},{py(cum[k - 1] if k else y0):.1f}" for x, cum in reversed(stacked)]
        out.append(
            f'<polygon fill="{PART_COLOURS[k]}" fill-opacity="0.35" stroke="none" '
            f'points="{" ".join(top + bottom)}"/>'
        )
        legend.append(
            (label + (" (at the forked looks)" if k == 0 else ""), PART_COLOURS[k],
             ' stroke-width="8"')
        )
    for i, (label, vs) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        run: list[str] = []
        runs: list[list[str]] = []
        for x, v in zip(xs, vs):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            run.append(f"{px(x):.1f},{py(v / MIB):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{" ".join(r)}"/>'
            )
        legend.append((label, colour, ""))
    if lines_mb:
        (ax, ay), (bx, by) = lines_mb
        out.append(
            f'<line x1="{px(ax):.1f}" y1="{py(ay):.1f}" x2="{px(bx):.1f}" y2="{py(by):.1f}" '
            'stroke="black" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        assert trend is not None
        legend.append(
            (f"trend {trend.slope_mb_per_hour:+,.1f} MB/hour", "black", ' stroke-dasharray="6 4"')
        )
    width = 48 + 6.5 * max((len(label) for label, _, _ in legend), default=0)
    out.append(
        f'<rect x="{LEFT + 4}" y="{TOP + 2}" width="{width:.0f}" height="{16 * len(legend) + 4}" '
        'fill="white" fill-opacity="0.85" stroke="#ccc"/>'
    )
    for i, (label, colour, dash) in enumerate(legend):
        y = TOP + 14 + i * 16
        width_attr = "" if "stroke-width" in dash else ' stroke-width="2"'
        out.append(
            f'<line x1="{LEFT + 10}" x2="{LEFT + 34}" y1="{y - 4}" y2="{y - 4}" '
            f'stroke="{colour}"{width_attr}{dash}/>'
        )
        out.append(f'<text x="{LEFT + 40}" y="{y}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def sparkline(values: Sequence[float], width: int = 60, ascii_only: bool = False) -> str:
    """The series' shape in one line of text (averaged down to ``width`` cells).

    >>> sparkline([1, 2, 3, 4, 5, 6, 7, 8])
    '▁▂▃▄▅▆▇█'
    >>> sparkline([5, 5, 5], ascii_only=True)
    '___'
    """
    if not values:
        return ""
    cells: list[float] = []
    n = len(values)
    for i in range(min(width, n)):
        a, b = i * n // min(width, n), (i + 1) * n // min(width, n)
        chunk = values[a : max(b, a + 1)]
        cells.append(sum(chunk) / len(chunk))
    lo, hi = min(cells), max(cells)
    bars = "_.-=+*#@" if ascii_only else BARS
    if hi - lo < 1e-9:
        return bars[0] * len(cells)
    return "".join(bars[min(len(bars) - 1, int((c - lo) / (hi - lo) * len(bars)))] for c in cells)


def memory_png(ts: Sequence[float], rss: Sequence[int], uss: Sequence[int | None], trend: Trend,
               title: str, rss_label: str = "RSS") -> bytes:
    """The plot as PNG bytes. Raises ImportError when matplotlib is missing (the caller says so)."""
    import logging

    # A service account without a writable home makes matplotlib warn about its font cache on
    # stderr; that is not the user's problem (it falls back to a temporary directory).
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure

    # Long watches read better in minutes.
    scale, unit = (60.0, "min") if ts and ts[-1] > 1200 else (1.0, "s")
    xs = [t / scale for t in ts]
    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(xs, [v / MIB for v in rss], marker=".", markersize=3, linewidth=1, label=rss_label)
    if uss and all(u is not None for u in uss):
        ax.plot(
            xs, [(u or 0) / MIB for u in uss], marker=".", markersize=3, linewidth=1, label="USS"
        )
    if len(ts) >= 2:
        line = [(trend.slope_bytes_per_s * t + trend.intercept) / MIB for t in (ts[0], ts[-1])]
        ax.plot([xs[0], xs[-1]], line, linestyle="--", linewidth=1.5, color="black",
                label=f"trend {trend.slope_mb_per_hour:+.1f} MB/hour")
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("MB (MiB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
