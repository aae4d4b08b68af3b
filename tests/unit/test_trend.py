"""The memory verdict on synthetic series, and the pure parts of `monitor` and `report` output."""

from __future__ import annotations

import random
from typing import Any

import pytest

from introspect.commands.backrefs import chain_text
from introspect.commands.monitor import Sample, csv_text
from introspect.render.html import report_html
from introspect.trend import MIB, fit_line, memory_trend

RNG_SEED = 20240601


def series(n: int, step: float, f: Any) -> tuple[list[float], list[float]]:
    ts = [i * step for i in range(n)]
    return ts, [f(t) for t in ts]


def test_linear_growth_with_rss_jitter_is_steady_growth() -> None:
    # GIVEN 1 MiB/s of growth over 20 s, with +-64 KiB of page-level jitter
    rng = random.Random(RNG_SEED)
    ts, ys = series(101, 0.2, lambda t: 200 * MIB + MIB * t + rng.uniform(-64, 64) * 1024)
    trend = memory_trend(ts, ys)
    # THEN the slope is recovered and the verdict is steady growth
    assert trend.verdict == "steady growth"
    assert trend.slope_bytes_per_s == pytest.approx(MIB, rel=0.02)
    assert trend.slope_mb_per_hour == pytest.approx(3600, rel=0.02)
    assert trend.r2 > 0.99 and trend.samples == 101 and trend.span_s == pytest.approx(20)


def test_flat_with_small_noise_is_flat() -> None:
    rng = random.Random(RNG_SEED)
    ts, ys = series(60, 1.0, lambda t: 80 * MIB + rng.gauss(0, 100 * 1024))
    trend = memory_trend(ts, ys)
    assert trend.verdict == "flat", trend
    assert abs(trend.change_bytes) < MIB and trend.noise_bytes < MIB


def test_flat_with_large_noise_is_noisy() -> None:
    rng = random.Random(RNG_SEED)
    ts, ys = series(60, 1.0, lambda t: 80 * MIB + rng.gauss(0, 4 * MIB))
    assert memory_trend(ts, ys).verdict == "noisy"


def test_sawtooth_is_noisy_not_growth() -> None:
    # GIVEN a cache filled by 2 MiB/s for 10 s, then cleared, five times over
    ts, ys = series(250, 0.2, lambda t: 100 * MIB + 2 * MIB * (t % 10))
    trend = memory_trend(ts, ys)
    # THEN it moves a lot, but not like a line: noisy
    assert trend.verdict == "noisy", trend
    assert trend.r2 < 0.8


def test_sawtooth_riding_a_leak_is_still_growth_when_the_line_dominates() -> None:
    ts, ys = series(300, 1.0, lambda t: 100 * MIB + 0.5 * MIB * t + 2 * MIB * (t % 10 >= 5))
    trend = memory_trend(ts, ys)
    assert trend.verdict == "steady growth" and trend.r2 >= 0.8


def test_shrinking() -> None:
    ts, ys = series(30, 1.0, lambda t: 500 * MIB - 3 * MIB * t)
    trend = memory_trend(ts, ys)
    assert trend.verdict == "shrinking" and trend.slope_bytes_per_s == pytest.approx(-3 * MIB)


def test_single_step_is_noisy() -> None:
    # One allocation burst and nothing after: memory moved, but it is not a trend.
    ts, ys = series(40, 1.0, lambda t: 100 * MIB + (20 * MIB if t >= 35 else 0))
    assert memory_trend(ts, ys).verdict == "noisy"


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_too_few_samples(n: int) -> None:
    ts, ys = series(n, 1.0, lambda t: MIB * 10 * t)
    assert memory_trend(ts, ys).verdict == "too few samples"


def test_one_timestamp_is_too_few_samples() -> None:
    assert memory_trend([5.0] * 8, [float(MIB * i) for i in range(8)]).verdict == "too few samples"


def test_fit_line_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        fit_line([0, 1], [1])


def test_csv_has_a_column_per_child_ever_seen() -> None:
    samples = [Sample(0.0, 300, 900, 100, {11: 100}), Sample(0.5, 500, 1000, None, {11: 150, 12: 200})]
    assert csv_text(samples, children=True).splitlines() == [
        "t,rss,vms,uss,rss_11,rss_12",
        "0.000,300,900,100,100,",
        "0.500,500,1000,,150,200",
    ]
    assert csv_text(samples, children=False).splitlines()[0] == "t,rss,vms,uss"


def test_report_html_escapes_what_comes_from_the_target() -> None:
    # GIVEN a document whose type names, chain labels and process name carry HTML
    evil = '<script>alert("x")</script>'
    chain = {"root": f"module {evil}", "count": 1, "path": [{"type": "module", "via": f".{evil}"}, {"type": evil, "via": None}]}
    doc: dict[str, Any] = {
        "pid": 42, "name": evil, "python": "3.11.2", "method": "gdb", "paused_s": 0.01, "complete": False,
        "problem": f"exited {evil}", "duration_s": 3.0, "interval_s": 1.0,
        "memory": {"samples": 4, "first_rss_mb": 1.0, "last_rss_mb": 2.0, "slope_bytes_per_s": 1.0,
                   "slope_mb_per_hour": 0.0, "r2": 0.5, "verdict": "too few samples", "notes": []},
        "looks": [{}, {}], "grew_every_interval": [evil],
        "growing": [{"type": evil, "count": 3, "delta": 1, "since_baseline": 2}],
        "backrefs": [{"type": evil, "found": 3, "sampled": 1, "unrooted": 0, "partial": True, "reason": evil,
                      "chains": [chain], "files": {"note": evil}, "json": f"/x/backrefs-{evil}.json"}],
        "skipped": [{"type": evil, "reason": evil}],
        "files": {"csv": "/x/monitor.csv", "png": None, "growth": "/x/growth.json"},
    }
    # WHEN the page is rendered
    html = report_html(doc, chain_text)
    # THEN no markup from the target survives, but the names are all there, escaped
    assert "<script" not in html
    assert html.count("&lt;script&gt;") >= 8
    assert "Incomplete report" in html


def test_a_slow_leak_on_a_short_window_is_growth() -> None:
    # GIVEN 1 GB a day (12 KB/s) sampled every second for 20 s, RSS moving in whole pages
    ts, ys = series(21, 1.0, lambda t: 300 * MIB + 4096 * int(12_000 * t / 4096))
    trend = memory_trend(ts, ys)
    # THEN under 1 MiB was added, but the clean, significant slope is growth, projected per day
    assert trend.change_bytes < MIB
    assert trend.verdict == "steady growth", trend
    assert 900 < trend.slope_mb_per_day < 1100


def test_a_few_page_faults_are_not_a_trend() -> None:
    # GIVEN a flat process that touched two new pages during the window
    ts, ys = series(20, 1.0, lambda t: 80 * MIB + (4096 if t >= 8 else 0) + (4096 if t >= 15 else 0))
    # THEN that is flat: 8 KiB cannot make a trend, however well a line fits it
    assert memory_trend(ts, ys).verdict == "flat"


def test_five_samples_need_a_significant_slope() -> None:
    # GIVEN five samples whose line explains 80 % of the variance but whose slope is only ~3.5
    # standard errors: a chance alignment is not called growth
    ts = [0.0, 1.0, 2.0, 3.0, 4.0]
    ys = [100 * MIB + v * 1024 for v in (0, 300, 100, 500, 400)]
    trend = memory_trend(ts, ys)
    assert trend.t_value < 4.0 and trend.verdict != "steady growth", trend


# Series shaped like the ones recorded on real programs (issue 25): RSS every 5 s, in whole pages,
# with the jitter a busy worker shows. The verdict must tell a cache that filled from a leak.
def _pages(y: float) -> float:
    return 4096.0 * int(y / 4096)


def test_flower_filling_its_task_cap_then_full_levels_off() -> None:
    # GIVEN Flower's 420 s: 51.8 -> 77.2 MB in 275 s (--max_tasks filling), then 76.5-77.2 MB
    rng = random.Random(RNG_SEED)
    ts, ys = series(85, 5.0, lambda t: _pages(MIB * (51.8 + 25.4 * min(t, 275) / 275 + rng.uniform(-0.35, 0.35))))
    trend = memory_trend(ts, ys)
    # THEN it is not "steady growth": it levelled off at ~77 MB, near 275 s, and what is projected
    # is the flat slope after it
    assert trend.verdict == "levelled off", trend
    assert trend.levelled_off_at is not None and trend.since_s is not None
    assert 76.5 * MIB < trend.levelled_off_at < 77.5 * MIB
    assert 250 <= trend.since_s <= 300
    assert abs(trend.projected_bytes_per_s) * 3600 < 5 * MIB
    assert trend.slope_bytes_per_s > 0  # the whole window's line is still there, for the record


def test_celery_child_fast_climb_then_flat_levels_off() -> None:
    # GIVEN the prefork child: 45.7 -> 140 MB in 33 s, then ~150 MB with +-3 MB of garbage coming and going
    rng = random.Random(RNG_SEED)
    ts, ys = series(60, 5.0, lambda t: _pages(MIB * ((45.7 + 94.3 * t / 33) if t < 33 else 150 + rng.uniform(-3, 3))))
    trend = memory_trend(ts, ys)
    assert trend.verdict == "levelled off", trend
    assert trend.since_s is not None and 30 <= trend.since_s <= 40
    assert trend.levelled_off_at is not None and abs(trend.levelled_off_at - 150 * MIB) < 2 * MIB


def test_linear_growth_recorded_in_pages_is_not_a_plateau() -> None:
    # GIVEN a leak of 0.3 MB/min over 420 s: the last quarter adds only 0.5 MB (under 1 MiB)
    rng = random.Random(RNG_SEED)
    ts, ys = series(85, 5.0, lambda t: _pages(MIB * (60 + 0.005 * t) + rng.uniform(-16, 16) * 1024))
    trend = memory_trend(ts, ys)
    # THEN the recent slope equals the whole window's: still growing, no plateau
    assert trend.verdict == "steady growth", trend
    assert trend.levelled_off_at is None and trend.since_s is None


def test_sawtooth_is_not_a_plateau() -> None:
    # GIVEN a heap that see-saws with garbage: +2 MiB/s for 10 s, collected, again, after a warm-up climb
    ts, ys = series(300, 1.0, lambda t: 100 * MIB + MIB * min(t, 60) + 2 * MIB * (t % 10))
    trend = memory_trend(ts, ys)
    # THEN the swings after the climb are too wide to call it level
    assert trend.verdict != "levelled off", trend


def test_noise_around_a_level_is_not_a_plateau() -> None:
    rng = random.Random(RNG_SEED)
    ts, ys = series(120, 1.0, lambda t: 80 * MIB + rng.gauss(0, 3 * MIB))
    trend = memory_trend(ts, ys)
    assert trend.verdict == "noisy" and trend.levelled_off_at is None, trend


def test_a_late_short_flat_stretch_on_a_leak_is_still_growth() -> None:
    # GIVEN a steady leak whose last 10 % happened to be flat: too short a tail to call a plateau
    ts, ys = series(100, 1.0, lambda t: 100 * MIB + MIB * min(t, 90))
    assert memory_trend(ts, ys).verdict == "steady growth"
