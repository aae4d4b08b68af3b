"""Memory over time as a PNG: RSS (and USS) in MB with the least-squares trend line.

matplotlib is imported here, lazily, only when a plot is drawn: it costs about half a second of
start-up that the other commands should not pay. No pyplot: a bare ``Figure`` renders with the Agg
canvas, needs no display and keeps no global state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from introspect.trend import MIB, Trend


def memory_png(ts: Sequence[float], rss: Sequence[int], uss: Sequence[int | None], trend: Trend, title: str,
               rss_label: str = "RSS") -> bytes:
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
        ax.plot(xs, [(u or 0) / MIB for u in uss], marker=".", markersize=3, linewidth=1, label="USS")
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
