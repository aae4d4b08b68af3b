"""Is memory growing? A least-squares line through (time, bytes) samples and a plain verdict.

Pure functions, no I/O: ``monitor`` and ``report`` feed them RSS samples taken with psutil.

The verdict rule (``MIN_CHANGE_BYTES`` = 1 MiB, ``R2_STEADY`` = 0.8, ``MIN_SAMPLES`` = 5):

- ``too few samples``: fewer than 5 samples, or they all share one timestamp;
- ``steady growth``: the fitted line rises by at least 1 MiB over the window (slope x span) **and**
  explains at least 80 % of the variance (r² >= 0.8): memory climbs, and climbs like a line;
- ``shrinking``: the same, falling by at least 1 MiB;
- ``flat``: the fitted change is under 1 MiB and the scatter around the line (residual standard
  deviation) is under 1 MiB too: nothing moves enough to matter;
- ``noisy``: everything else: memory moves by 1 MiB or more, but a straight line does not explain it
  (sawtooth of a cache being filled and cleared, spikes, a single step).

r² >= 0.8 also means the fitted change is about 7 times the residual noise or more (for evenly spaced
samples), so a "steady growth" verdict is never the noise talking. The 1 MiB floor keeps a few pages
of allocator churn from counting as growth or shrinkage; a leak too slow to add 1 MiB within the
window is reported as "flat" for that window: watch longer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1 << 20
MIN_CHANGE_BYTES = MIB
R2_STEADY = 0.8
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

    @property
    def slope_mb_per_hour(self) -> float:
        """MB here is MiB (2**20 bytes), as ps, top and htop count."""
        return self.slope_bytes_per_s * 3600 / MIB


def memory_trend(ts: Sequence[float], ys: Sequence[float], *, min_change: float = MIN_CHANGE_BYTES,
                 r2_steady: float = R2_STEADY, min_samples: int = MIN_SAMPLES) -> Trend:
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
    >>> memory_trend([0, 1], [0, 10 * MIB]).verdict
    'too few samples'
    """
    ts = [float(t) for t in ts]
    ys = [float(y) for y in ys]
    f = fit_line(ts, ys)
    span = (max(ts) - min(ts)) if ts else 0.0
    change = f.slope * span
    if len(ts) < min_samples or span <= 0:
        verdict = "too few samples"
    elif abs(change) >= min_change and f.r2 >= r2_steady:
        verdict = "steady growth" if change > 0 else "shrinking"
    elif abs(change) < min_change and f.noise < min_change:
        verdict = "flat"
    else:
        verdict = "noisy"
    return Trend(len(ts), span, f.slope, f.intercept, f.r2, change, f.noise, verdict)
