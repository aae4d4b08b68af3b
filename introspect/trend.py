"""Is memory growing? A least-squares line through (time, bytes) samples and a plain verdict.

Pure functions, no I/O: ``monitor`` and ``report`` feed them RSS samples taken with psutil.

The verdict rule (``MIN_SAMPLES`` = 5, ``R2_STEADY`` = 0.8, ``T_SIGNIFICANT`` = 4,
``MIN_STEADY_BYTES`` = 64 KiB, ``MIN_CHANGE_BYTES`` = 1 MiB):

- ``too few samples``: fewer than 5 samples, or they all share one timestamp;
- ``steady growth``: the slope is significant (at least 4 times its standard error), the line
  explains at least 80 % of the variance (r² >= 0.8: memory climbs like a line, not in one step or
  a sawtooth), and the fitted rise over the window is at least 64 KiB (16 pages: RSS moves in
  pages, and a couple of page faults must not line up into a "trend");
- ``shrinking``: the same, falling;
- ``flat``: not a steady trend, and both the fitted change and the scatter around the line
  (residual standard deviation) are under 1 MiB: nothing moves enough to matter;
- ``noisy``: everything else: memory moves by 1 MiB or more, but not like a line.

A short window is judged by its slope, not by how much it added: a worker leaking 1 GB a day adds
only 230 KB in 20 s, yet its line is as clean as it gets. What such a slope means is stated as a
projection (MB per hour and per day).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1 << 20
MIN_CHANGE_BYTES = MIB
MIN_STEADY_BYTES = 64 << 10
R2_STEADY = 0.8
T_SIGNIFICANT = 4.0
MIN_SAMPLES = 5
VERDICTS = ("steady growth", "flat", "noisy", "shrinking", "too few samples")


@dataclass(frozen=True)
class Fit:
    slope: float  # units of y per unit of t
    intercept: float
    r2: float  # 0.0 when y does not vary at all (nothing to explain)
    noise: float  # residual standard deviation around the line


def fit_line(ts: Sequence[float], ys: Sequence[float]) -> Fit:
    """Ordinary least squares y = slope * t + intercept.

    >>> fit_line([0, 1, 2, 3], [10, 12, 14, 16])
    Fit(slope=2.0, intercept=10.0, r2=1.0, noise=0.0)
    >>> fit_line([0, 1, 2], [5, 5, 5])
    Fit(slope=0.0, intercept=5.0, r2=0.0, noise=0.0)
    """
    n = len(ts)
    if n != len(ys):
        raise ValueError(f"{n} times but {len(ys)} values")
    if n == 0:
        return Fit(0.0, 0.0, 0.0, 0.0)
    mt = math.fsum(ts) / n
    my = math.fsum(ys) / n
    stt = math.fsum((t - mt) ** 2 for t in ts)
    sty = math.fsum((t - mt) * (y - my) for t, y in zip(ts, ys))
    slope = sty / stt if stt > 0 else 0.0
    intercept = my - slope * mt
    ss_res = math.fsum((y - (slope * t + intercept)) ** 2 for t, y in zip(ts, ys))
    ss_tot = math.fsum((y - my) ** 2 for y in ys)
    r2 = max(0.0, 1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0
    # n - 2 degrees of freedom: two parameters were fitted.
    noise = math.sqrt(ss_res / (n - 2)) if n > 2 else 0.0
    return Fit(slope, intercept, r2, noise)


@dataclass(frozen=True)
class Trend:
    samples: int
    span_s: float
    slope_bytes_per_s: float
    intercept: float
    r2: float
    change_bytes: float  # the fitted line's rise over the window: slope * span
    noise_bytes: float
    verdict: str
    t_value: float = 0.0  # slope / its standard error (inf for a perfect line)

    @property
    def slope_mb_per_hour(self) -> float:
        """MB here is MiB (2**20 bytes), as ps, top and htop count."""
        return self.slope_bytes_per_s * 3600 / MIB

    @property
    def slope_mb_per_day(self) -> float:
        return self.slope_mb_per_hour * 24


def memory_trend(ts: Sequence[float], ys: Sequence[float], *, min_change: float = MIN_CHANGE_BYTES,
                 r2_steady: float = R2_STEADY, min_samples: int = MIN_SAMPLES, min_steady: float = MIN_STEADY_BYTES,
                 t_significant: float = T_SIGNIFICANT) -> Trend:
    """Fit a line through (seconds, bytes) and name what it shows (the rule is in the module docstring).

    A leak of 2 MiB/s, sampled for 10 s:

    >>> t = memory_trend([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [100 * MIB + 2 * MIB * s for s in range(11)])
    >>> t.verdict, t.slope_bytes_per_s == 2 * MIB, t.slope_mb_per_hour, t.r2
    ('steady growth', True, 7200.0, 1.0)

    A few pages coming and going:

    >>> memory_trend(range(6), [50 * MIB, 50 * MIB + 4096, 50 * MIB, 50 * MIB + 8192, 50 * MIB, 50 * MIB]).verdict
    'flat'

    Freed and refilled in 6 MiB waves (a sawtooth), no net growth:

    >>> memory_trend(range(12), [MIB * (40 + 2 * (i % 4)) for i in range(12)]).verdict
    'noisy'

    >>> memory_trend(range(6), [MIB * (60 - 3 * i) for i in range(6)]).verdict
    'shrinking'

    1 GB a day (12 KB/s) watched for 20 s: far under 1 MiB added, but a clean line:

    >>> t = memory_trend(range(21), [300 * MIB + 4096 * (3 * s) for s in range(21)])
    >>> t.verdict, round(t.slope_mb_per_day)
    ('steady growth', 1012)
    >>> memory_trend([0, 1], [0, 10 * MIB]).verdict
    'too few samples'
    """
    ts = [float(t) for t in ts]
    ys = [float(y) for y in ys]
    f = fit_line(ts, ys)
    span = (max(ts) - min(ts)) if ts else 0.0
    change = f.slope * span
    t_value = _t_value(ts, f)
    if len(ts) < min_samples or span <= 0:
        verdict = "too few samples"
    elif t_value >= t_significant and f.r2 >= r2_steady and abs(change) >= min_steady:
        verdict = "steady growth" if change > 0 else "shrinking"
    elif abs(change) < min_change and f.noise < min_change:
        verdict = "flat"
    else:
        verdict = "noisy"
    return Trend(len(ts), span, f.slope, f.intercept, f.r2, change, f.noise, verdict, t_value)


def _t_value(ts: Sequence[float], f: Fit) -> float:
    """|slope| / its standard error: how many times the slope stands above what noise would give."""
    n = len(ts)
    if n < 3 or f.slope == 0:
        return 0.0
    mt = math.fsum(ts) / n
    stt = math.fsum((t - mt) ** 2 for t in ts)
    if stt <= 0:
        return 0.0
    se = f.noise / math.sqrt(stt)
    return math.inf if se == 0 else abs(f.slope) / se
