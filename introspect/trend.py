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
- ``noisy``: everything else: memory moves by 1 MiB or more, but not like a line;
- ``levelled off``: a window that would be ``steady growth`` or ``noisy`` but whose recent part
  is flat: a capped cache that filled up, a worker that warmed up. The change point is the
  earliest sample from which the rest of the window (at least a quarter of it, and 5 samples)
  rises by less than ``max(1 MiB, 5 % of the climb)`` with a slope under a fifth of the whole
  window's, and the climb to that level is at least 1 MiB and 4 times the scatter after it.
  ``levelled_off_at`` is the mean level after the change point, ``since_s`` its time, and
  ``recent_slope_bytes_per_s`` the slope after it: only that is projected.

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
PLATEAU_MIN_FRACTION = 0.25  # the flat tail covers at least this share of the window
PLATEAU_SLOPE_RATIO = 0.2  # its slope is at most this share of the whole window's
PLATEAU_TOLERANCE = 0.05  # and it moves by at most this share of the climb (or 1 MiB)
VERDICTS = ("steady growth", "flat", "noisy", "shrinking", "levelled off", "too few samples")


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
    levelled_off_at: float | None = None  # bytes: the mean level after the change point
    since_s: float | None = None  # the time of the change point (the samples' own clock)
    recent_slope_bytes_per_s: float | None = None  # the slope after the change point
    flat_for_s: float | None = None  # from the change point to the last sample

    @property
    def projected_bytes_per_s(self) -> float:
        """The slope worth projecting: after a plateau only what still grows."""
        recent = self.recent_slope_bytes_per_s
        return self.slope_bytes_per_s if recent is None else recent

    @property
    def slope_mb_per_hour(self) -> float:
        """MB here is MiB (2**20 bytes), as ps, top and htop count."""
        return self.slope_bytes_per_s * 3600 / MIB

    @property
    def slope_mb_per_day(self) -> float:
        return self.slope_mb_per_hour * 24


def memory_trend(ts: Sequence[float], ys: Sequence[float], *, min_change: float = MIN_CHANGE_BYTES,
                 r2_steady: float = R2_STEADY, min_samples: int = MIN_SAMPLES,
                 min_steady: float = MIN_STEADY_BYTES,
                 t_significant: float = T_SIGNIFICANT) -> Trend:
    """Fit a line through (seconds, bytes) and name what it shows (the rule is in the module
    docstring).

    A leak of 2 MiB/s, sampled for 10 s:

    >>> t = memory_trend(list(range(11)), [100 * MIB + 2 * MIB * s for s in range(11)])
    >>> t.verdict, t.slope_bytes_per_s == 2 * MIB, t.slope_mb_per_hour, t.r2
    ('steady growth', True, 7200.0, 1.0)

    A few pages coming and going:

    >>> pages = [50 * MIB, 50 * MIB + 4096, 50 * MIB, 50 * MIB + 8192, 50 * MIB, 50 * MIB]
    >>> memory_trend(range(6), pages).verdict
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

    A cache that fills by 1 MiB/s for 30 s and then stays full for 30 s:

    >>> t = memory_trend(range(61), [50 * MIB + MIB * min(s, 30) for s in range(61)])
    >>> t.verdict, t.levelled_off_at == 80 * MIB, t.since_s, t.recent_slope_bytes_per_s
    ('levelled off', True, 30.0, 0.0)
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
    if verdict in ("steady growth", "noisy") and f.slope > 0:
        plateau = _plateau(ts, ys, f.slope, min_samples, min_change)
        if plateau is not None:
            level, since, recent = plateau
            return Trend(len(ts), span, f.slope, f.intercept, f.r2, change, f.noise, "levelled off",
                         t_value, level, since, recent, ts[-1] - since)
    return Trend(len(ts), span, f.slope, f.intercept, f.r2, change, f.noise, verdict, t_value)


def _plateau(
    ts: list[float], ys: list[float], slope: float, min_samples: int, min_change: float
) -> tuple[float, float, float] | None:
    """(level, since, recent slope) of the flat tail that follows a climb, or None (rule above).

    Of the tails that qualify, the change point is the one where a line before it and a line
    after it fit best (least total squared error): the knee, not the earliest tail that passes.
    Prefix and suffix sums make every candidate's fit O(1) (an hour sampled every second is 3,600
    candidates); times and values are centred first so the sums of squares keep their precision.
    """
    n = len(ts)
    t0, y0 = ts[0], math.fsum(ys) / n
    ct = [t - t0 for t in ts]
    cy = [y - y0 for y in ys]
    span = ct[-1]
    suffix = _running_sums(ct[::-1], cy[::-1])[::-1]  # suffix[k]: sums over k..n-1
    prefix = _running_sums(ct, cy)  # prefix[k - 1]: sums over 0..k-1
    best: tuple[float, float, float, float] | None = None  # (sse, level, since, slope)
    head_min = ys[0]
    for k in range(1, n - min_samples + 1):
        head_min = min(head_min, ys[k - 1])
        tail_span = ct[-1] - ct[k]
        if tail_span < PLATEAU_MIN_FRACTION * span:
            break
        tail = _sums_fit(suffix[k], n - k)
        if tail is None:
            continue
        tail_slope, tail_sse, tail_mean = tail
        noise = math.sqrt(tail_sse / (n - k - 2)) if n - k > 2 else 0.0
        level = y0 + tail_mean
        rise = level - head_min
        tolerance = max(min_change, PLATEAU_TOLERANCE * rise)
        if not (
            rise >= max(min_change, 4 * noise)
            and abs(tail_slope) * tail_span <= tolerance
            and tail_slope <= PLATEAU_SLOPE_RATIO * slope
            and noise <= tolerance
        ):
            continue
        head = _sums_fit(prefix[k - 1], k)
        sse = tail_sse + (head[1] if head is not None else 0.0)
        if best is None or sse < best[0]:
            best = (sse, level, ts[k], tail_slope)
    return None if best is None else best[1:]


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


Sums = tuple[float, float, float, float, float]


def _running_sums(ts: list[float], ys: list[float]) -> list[Sums]:
    """Cumulative (Σt, Σy, Σt², Σty, Σy²) after each element."""
    out: list[Sums] = []
    st = sy = stt = sty = syy = 0.0
    for t, y in zip(ts, ys):
        st += t
        sy += y
        stt += t * t
        sty += t * y
        syy += y * y
        out.append((st, sy, stt, sty, syy))
    return out


def _sums_fit(sums: Sums, m: int) -> tuple[float, float, float] | None:
    """(slope, squared error around the line, mean y) of m points from their sums (None: one
    time only)."""
    st, sy, stt, sty, syy = sums
    vtt = stt - st * st / m
    if m < 2 or vtt <= 0:
        return None
    vty = sty - st * sy / m
    vyy = syy - sy * sy / m
    slope = vty / vtt
    return slope, max(0.0, vyy - slope * vty), sy / m
