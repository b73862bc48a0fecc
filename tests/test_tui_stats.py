"""Pure helpers of the TUI: rates, throttling, sizes and text clean-up, without an app."""

import pytest

pytest.importorskip("textual")

from tui.app import minillm_size  # noqa: E402
from tui.stats import (RateMeter, Throttle, has_engram, hit_rate, routing_delta, short_size,  # noqa: E402
                       sparkline)
from tui.widgets.output_view import printable  # noqa: E402
from tui.widgets.tier_panel import usage_bar  # noqa: E402


def snapshot(seconds: float, hbm_in: int, engram_rows: int | None = None) -> dict:
    tier = {"capacity_bytes": 100, "used_bytes": 0, "used_by_kind": {}, "bytes_in": hbm_in, "bytes_out": 0}
    prefill = min(seconds, 0.5)
    result = {"tiers": {"hbm": tier}, "generation": {"prefill_seconds": prefill, "decode_seconds": seconds - prefill}}
    if engram_rows is not None:
        result["engram_rows"] = engram_rows
    return result


def test_rate_meter_bytes_per_second():
    meter = RateMeter()
    meter.reset(snapshot(0.0, 1000))  # counters at the start of the generation
    rates = meter.update(snapshot(0.5, 1500))
    assert rates["hbm.in"] == pytest.approx(1000.0)
    assert rates["hbm.out"] == 0.0
    rates = meter.update(snapshot(2.0, 1500))
    assert rates["hbm.in"] == 0.0
    assert meter.series("hbm.in") == pytest.approx([1000.0, 0.0])


def test_rate_meter_same_time_keeps_rates():
    meter = RateMeter()
    meter.reset(snapshot(0.0, 0))
    meter.update(snapshot(1.0, 100))
    assert meter.update(snapshot(1.0, 900))["hbm.in"] == pytest.approx(100.0)
    assert len(meter.series("hbm.in")) == 1


def test_rate_meter_history_is_bounded():
    meter = RateMeter(history=3)
    meter.reset(snapshot(0.0, 0))
    for step in range(1, 10):
        meter.update(snapshot(step, step))
    assert len(meter.series("hbm.in")) == 3


def test_rate_meter_engram_only_when_reported():
    meter = RateMeter()
    meter.reset(snapshot(0.0, 0))
    assert "engram_rows" not in meter.update(snapshot(1.0, 0))
    meter.reset(snapshot(0.0, 0, engram_rows=0))
    assert meter.update(snapshot(2.0, 0, engram_rows=40))["engram_rows"] == pytest.approx(20.0)


def test_has_engram_without_layers():
    assert not has_engram(snapshot(1.0, 0, engram_rows=0))
    assert not has_engram({})


def test_has_engram_from_tables_or_counters():
    tables = snapshot(0.0, 0, engram_rows=0)
    tables["tiers"]["dram"] = {"used_by_kind": {"engram": 4096}}
    assert has_engram(tables)
    assert has_engram(snapshot(1.0, 0, engram_rows=12))


def test_throttle_interval():
    throttle = Throttle(0.25)
    assert [throttle.due(t) for t in (0.0, 0.1, 0.24, 0.25, 0.3, 0.6)] == [True, False, False, True, False, True]


@pytest.mark.parametrize("size, text", [(0, "0"), (1023, "1023"), (1536, "1.5K"), (150 * 1024, "150K"),
                                        (5 * 1024**3, "5.0G")])
def test_short_size(size, text):
    assert short_size(size) == text


@pytest.mark.parametrize("size, text", [(512 * 1024**2, "512MiB"), (2 * 1024**3, "2GiB"), (1536, "1536"),
                                        (3 * 1024, "3KiB"), (0, "0")])
def test_budget_text_round_trips(size, text):
    assert minillm_size(size) == text


def test_hit_rate_before_lookups():
    assert hit_rate(0, 0) is None
    assert hit_rate(3, 1) == 0.75


def test_routing_delta_since_previous():
    assert routing_delta(None, [[1, 2]]) == [[1, 2]]
    assert routing_delta([[1, 2], [0, 0]], [[4, 2], [1, 5]]) == [[3, 0], [1, 5]]


def test_printable_replaces_control_characters():
    assert printable("a\x1b[2Jb\r\n\tc") == "a\ufffd[2Jb\ufffd\n\tc"


def test_usage_bar_proportions():
    bar = usage_bar({"kv": 25, "weights": 50}, 100, width=8)
    assert bar.plain == "██████░░"
    assert len(usage_bar({"kv": 500}, 100, width=8).plain) == 8
    assert usage_bar({}, 0, width=4).plain == "░░░░"


def test_sparkline_scaling():
    assert sparkline([0.0, 0.0], 4) == "  ▁▁"
    assert sparkline([0.0, 5.0, 10.0], 3) == "▁▅█"
    assert sparkline([1.0, 2.0, 3.0], 2) == "▆█"
    assert sparkline([10.0], 1, peak=20.0) == "▅"
