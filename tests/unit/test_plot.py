"""The memory chart every install draws (SVG, no plotting library) and the terminal's one-line chart."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from introspect.commands.monitor import Sample, Sampler, write_outputs
from introspect.render.output import OutputDir
from introspect.render.plot import memory_svg, sparkline
from introspect.trend import MIB, memory_trend

SVG = "{http://www.w3.org/2000/svg}"


def test_svg_is_well_formed_with_a_line_per_series_and_the_trend() -> None:
    # GIVEN 30 samples of RSS growing 1 MiB/s and a USS with one unreadable sample
    ts = [float(i) for i in range(30)]
    rss = [100 * MIB + i * MIB for i in range(30)]
    uss: list[float | None] = [80.0 * MIB + i * MIB for i in range(30)]
    uss[10] = None
    trend = memory_trend(ts, rss)
    # WHEN drawn
    root = ET.fromstring(memory_svg(ts, [("RSS", [float(v) for v in rss]), ("USS", uss)], trend, "pid 7 & <x>"))
    # THEN it parses as SVG: RSS one line, USS two (the gap), the dashed trend, the title escaped
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 3
    assert len(lines[0].get("points", "").split()) == 30
    assert [len(p.get("points", "").split()) for p in lines[1:]] == [10, 19]
    dashed = [e for e in root.iter(f"{SVG}line") if e.get("stroke-dasharray")]
    assert dashed, "no trend line"
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "pid 7 & <x>" in texts and any("trend +3,600.0 MB/hour" in t for t in texts)
    # the y axis covers the data: ticks are round MB values spanning 80..129 MiB
    ticks = [float(t.replace(",", "")) for t in texts if t.replace(",", "").replace(".", "").isdigit()]
    assert min(ticks) <= 80 and max(ticks) >= 129


def test_svg_of_one_sample_and_of_a_flat_series_draws() -> None:
    for ts, ys in (([0.0], [5.0 * MIB]), ([0.0, 1.0, 2.0], [5.0 * MIB] * 3)):
        root = ET.fromstring(memory_svg(ts, [("RSS", list(ys))], memory_trend(ts, ys), "t"))
        assert root.findall(f"{SVG}polyline")


def test_sparkline_shapes() -> None:
    assert sparkline([]) == ""
    assert sparkline(list(range(1000)), width=8) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), width=40)) == 40
    up_then_flat = sparkline([float(i) for i in range(50)] + [50.0] * 50, width=10)
    assert up_then_flat[:5] != up_then_flat[0] * 5 and len(set(up_then_flat[5:])) == 1


def test_monitor_writes_svg_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an install without matplotlib (an import of it fails, as on a default install)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    sampler = Sampler(os.getpid(), False)
    samples = [Sample(float(i), 50 * MIB + i * MIB, 60 * MIB, 40 * MIB) for i in range(10)]
    trend = memory_trend([s.t for s in samples], [s.rss for s in samples])
    # WHEN monitor writes its files
    csv_path, svg_path, png_path, notes = write_outputs(OutputDir("monitor", 42, str(tmp_path)), sampler, samples, trend)
    # THEN the chart is there as SVG, no PNG, and nothing to complain about
    assert png_path is None and notes == []
    assert Path(svg_path).read_text().startswith("<svg") and Path(csv_path).exists()
    assert not (tmp_path / "monitor.png").exists()
