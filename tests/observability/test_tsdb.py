import logging
import math
import struct
import threading
from pathlib import Path

import pytest

from tideserve.observability.tsdb import DEFAULT_TIERS, Tier, TimeSeriesStore

# 10 s at 1 s, 100 s at 10 s, 1000 s at 100 s
TIERS = (Tier(1, 10), Tier(10, 10), Tier(100, 10))
A = {"service": "gw", "instance": "a", "node": "n1"}
B = {"service": "gw", "instance": "b", "node": "n2"}
C = {"service": "engine", "instance": "c", "node": "n1"}


def points(store: TimeSeriesStore, name: str, start: float, end: float, match=None) -> list:
    return [p for _, p in store.query(name, match, start, end)]


def ramp(n: int = 1000) -> TimeSeriesStore:
    """One series with value == t at every second from 0 to n - 1."""
    store = TimeSeriesStore(TIERS)
    for t in range(n):
        store.add("m", A, t, t)
    return store


def test_tier0_averages_its_newest_slot():
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 0.0, 1.0)
    store.add("m", A, 0.5, 2.0)
    store.add("m", A, 3.0, 4.0)
    store.add("m", A, 0.2, 8.0)  # a late point for an older slot still in the ring: it replaces it
    assert points(store, "m", 0, 9) == [[(0, 8.0), (3, 4.0)]]
    store.add("m", A, 3.5, 0.0)  # a one-round spike stays visible as its share of the slot
    assert points(store, "m", 0, 9) == [[(0, 8.0), (3, 2.0)]]


def test_coarser_tier_averages_its_slot():
    store = TimeSeriesStore(TIERS)
    for t, v in [(0, 1.0), (3, 2.0), (9.5, 6.0), (15, 10.0)]:
        store.add("m", A, t, v)
    store.add("m", A, 4, 100.0)  # slot 0 of tier 1 is no longer its newest: ignored there
    # start 0 is out of tier 0's ring (newest slot 15), so tier 1 answers
    assert points(store, "m", 0, 19) == [[(0, 3.0), (10, 10.0)]]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (995, 999, [(t, float(t)) for t in range(995, 1000)]),  # tier 0
        (990, 992, [(990, 990.0), (991, 991.0), (992, 992.0)]),  # oldest slot tier 0 holds
        (989, 999, [(990, 994.5)]),  # tier 1: slot times in range, averages of 10 values
        (900, 925, [(900, 904.5), (910, 914.5), (920, 924.5)]),
        (0, 250, [(0, 49.5), (100, 149.5), (200, 249.5)]),  # tier 2
        (-5000, 150, [(0, 49.5), (100, 149.5)]),  # past every ring: the coarsest tier
        (-math.inf, math.inf, [(t, t + 49.5) for t in range(0, 1000, 100)]),
        (500, 400, []),
    ],
)
def test_query_picks_finest_tier_covering_start(start, end, expected):
    assert points(ramp(), "m", start, end) == ([expected] if expected else [])


def test_query_skips_empty_slots():
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 0, 1.0)
    store.add("m", A, 3, 2.0)
    store.add("m", A, 7, 3.0)
    assert points(store, "m", 0, 9) == [[(0, 1.0), (3, 2.0), (7, 3.0)]]


@pytest.mark.parametrize(
    ("match", "instances"),
    [
        (None, {"a", "b"}),
        ({}, {"a", "b"}),
        ({"service": "gw"}, {"a", "b"}),
        ({"node": "n1"}, {"a"}),
        ({"node": "n1", "instance": "b"}, set()),
        ({"zone": "x"}, set()),
    ],
)
def test_match_selects_by_label_subset(match, instances):
    store = TimeSeriesStore(TIERS)
    for labels in (A, B):
        store.add("m", labels, 1, 1.0)
    store.add("other", C, 1, 1.0)
    assert {labels["instance"] for labels, _ in store.query("m", match, 0, 9)} == instances
    assert {labels["instance"] for labels, _, _ in store.latest("m", match)} == instances


@pytest.mark.parametrize(
    ("max_age_s", "now", "expected"),
    [
        (None, None, {"a": (20.0, 2.0), "b": (5.0, 3.0)}),
        (10, 25, {"a": (20.0, 2.0)}),
        (15, 20, {"a": (20.0, 2.0), "b": (5.0, 3.0)}),  # exactly max_age_s old still counts
        (1, 100, {}),
    ],
)
def test_latest_and_max_age(max_age_s, now, expected):
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 10, 1.0)
    store.add("m", A, 20, 2.0)
    store.add("m", A, 15, 9.0)  # older than the newest point: not what latest() reports
    store.add("m", B, 5, 3.0)
    got = store.latest("m", max_age_s=max_age_s, now=now)
    assert {labels["instance"]: (t, v) for labels, t, v in got} == expected


def test_latest_max_age_defaults_to_wall_clock():
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 10, 1.0)
    assert store.latest("m", max_age_s=3600) == []
    assert store.latest("m") == [(A, 10, 1.0)]


@pytest.mark.parametrize(
    ("jump_to", "start", "expected"),
    [
        (13, 4, [(t, 1.0) for t in range(4, 10)] + [(13, 2.0)]),  # slots 10-12 reuse positions 0-2
        (25, 16, [(25, 2.0)]),  # more than a ring: nothing from 0-9 survives
        (1_000_000, 999_991, [(1_000_000, 2.0)]),
    ],
)
def test_ring_wraparound_never_resurrects_old_slots(jump_to, start, expected):
    store = TimeSeriesStore(TIERS)
    for t in range(10):
        store.add("m", A, t, 1.0)
    store.add("m", A, jump_to, 2.0)
    store.add("m", A, jump_to - 10, 5.0)  # older than the ring: ignored
    assert points(store, "m", start, jump_to) == [expected]


def test_non_finite_values_are_ignored():
    store = TimeSeriesStore(TIERS)
    for v in (math.nan, math.inf, -math.inf):
        store.add("m", A, 1, v)
    assert store.series_count() == 0
    store.add("m", A, 1, 1.0)
    store.add("m", A, 1, math.nan)
    store.add("m", A, math.nan, 3.0)
    assert points(store, "m", 0, 9) == [[(1, 1.0)]]
    assert store.latest("m") == [(A, 1, 1.0)]


def test_max_series_refuses_new_series_only(caplog):
    store = TimeSeriesStore(TIERS, max_series=2)
    with caplog.at_level(logging.WARNING):
        for labels in (A, B, C, {"instance": "d"}):
            store.add("m", labels, 1, 1.0)
    assert store.series_count() == 2
    assert store.refused == 2
    assert len(caplog.records) == 1
    store.add("m", A, 2, 5.0)
    assert store.latest("m", {"instance": "a"}) == [(A, 2, 5.0)]


def test_drop_forgets_matching_series_of_any_name():
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 1, 1.0)
    store.add("m", B, 1, 1.0)
    store.add("other", C, 1, 1.0)
    before = store.memory_bytes()
    assert store.drop({"node": "n1"}) == 2
    assert store.names() == {"m"}
    assert store.series_count() == 1
    assert store.memory_bytes() < before
    assert store.drop({"node": "n1"}) == 0


def test_prune_forgets_series_older_than_longest_retention():
    store = TimeSeriesStore(TIERS)
    store.add("m", A, 500, 1.0)
    store.add("m", B, 1500, 1.0)
    assert store.prune(now=2000) == 1  # retention 1000 s: A's newest point is 1500 s old
    assert [labels for labels, _, _ in store.latest("m")] == [B]
    assert store.prune(now=2000) == 0


def test_memory_counts_allocated_rings():
    store = TimeSeriesStore(DEFAULT_TIERS)
    for i in range(10):
        store.add("m", {"instance": str(i)}, 0, 1.0)
    ring_bytes = sum(t.slots for t in DEFAULT_TIERS) * 4
    assert 10 * ring_bytes < store.memory_bytes() < 10 * ring_bytes * 1.2


def filled(tiers=TIERS) -> TimeSeriesStore:
    store = TimeSeriesStore(tiers)
    for t in range(0, 1500, 3):
        store.add("m", A, t, t % 17)
        store.add("m", B, t + 1, t % 5 + 0.25)
        store.add("other", C, t, -t)
    return store


def snapshot(store: TimeSeriesStore) -> dict:
    return {
        (name, start): store.query(name, None, start, 2000)
        for name in sorted(store.names())
        for start in (-1e9, 1450, 1495)  # one range per tier
    } | {name: store.latest(name) for name in store.names()}


def test_save_load_roundtrip(tmp_path: Path):
    store = filled()
    path = tmp_path / "tsdb.bin"
    store.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tsdb.bin"]  # no temp file left behind
    loaded = TimeSeriesStore.load(path, TIERS)
    assert loaded.series_count() == store.series_count() == 3
    assert snapshot(loaded) == snapshot(store)
    # running averages carry on where they stopped
    for s in (store, loaded):
        s.add("m", A, 1499, 100.0)
    assert snapshot(loaded) == snapshot(store)
    assert loaded.memory_bytes() == store.memory_bytes()


def test_load_missing_file_is_empty(tmp_path: Path, caplog):
    store = TimeSeriesStore.load(tmp_path / "absent.bin", TIERS)
    assert store.series_count() == 0
    assert caplog.records == []


def bump_version(data: bytes) -> bytes:
    magic, version, header_len, crc = struct.unpack_from("<4sIII", data)
    return struct.pack("<4sIII", magic, version + 1, header_len, crc) + data[16:]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"",
        lambda d: d[:7],
        lambda d: d[:100],
        lambda d: d[: len(d) // 2],
        lambda d: d[:-1],
        lambda d: d + b"\0",
        lambda d: d[:-50] + bytes([d[-50] ^ 1]) + d[-49:],  # one bit in a ring
        lambda d: d[:30] + b"}" + d[31:],  # the JSON header
        lambda d: d[:8] + b"\xff\xff\xff\x7f" + d[12:],  # a huge header length
        lambda d: b"garbage" * 100,
        bump_version,
    ],
)
def test_damaged_file_loads_empty_with_one_warning(tmp_path: Path, caplog, damage):
    path = tmp_path / "tsdb.bin"
    filled().save(path)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        store = TimeSeriesStore.load(path, TIERS)
    assert store.series_count() == 0
    assert store.names() == set()
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()


def test_tier_mismatch_loads_empty(tmp_path: Path, caplog):
    path = tmp_path / "tsdb.bin"
    filled().save(path)
    with caplog.at_level(logging.WARNING):
        store = TimeSeriesStore.load(path, (Tier(1, 10), Tier(10, 20)))
    assert store.series_count() == 0
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()


def test_a_reader_never_sees_half_a_round():
    """The collector writes a round while API handlers read; figures of one round appear together."""
    store = TimeSeriesStore()
    names = [f"figure_{i}" for i in range(50)]
    stop = threading.Event()
    torn: list[int] = []

    def read() -> None:
        while not stop.is_set():
            with store.snapshot():
                seen = {len(store.latest(n, {}, max_age_s=1e9, now=1e6)) for n in names}
            if len(seen) > 1:
                torn.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for t in range(1, 200):
            store.add_round(float(t), [(f"{n}", {"instance": str(t)}, 1.0) for n in names])
    finally:
        stop.set()
        reader.join()
    assert not torn
