"""Embedded time-series store: fixed-size rings per series and tier, saved to one file across restarts.

Each series keeps one float32 ring per tier, NaN marking an empty slot. A slot's index is
floor(t / step_s) and its ring position index % slots, so slot times are implicit; the newest index
written per tier says which lap of the ring a position holds, and positions skipped when time jumps
forward are cleared. Memory is bounded: at most max_series * sum(slots) * 4 bytes of rings, allocated
in full when a series first appears, plus per-series bookkeeping.

Write rule: tier 0 keeps the last value written into a slot, for any slot its ring still holds.
Coarser tiers average the values added to their newest slot; a write into an older slot of a coarser
tier is ignored there, since only the newest slot's running sum is kept. In every tier a write older
than the ring (index <= newest index - slots) is ignored.

File: a fixed head (magic, version, JSON length, CRC-32 of everything after the head), a JSON header
(tiers, byte order, per-series labels and bookkeeping), then each series' rings as raw float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<4sIII")  # magic, version, JSON header length, CRC-32 of header + rings
_MAGIC = b"TSDB"
_VERSION = 1
_NEVER = -(2**62)  # newest slot index of a fresh series: any write is newer
_HORIZON = 1e18  # seconds; query() clamps its range to this so that +-inf means "everything"
# what a damaged or foreign file can make parsing raise; load() turns these into an empty store
_BAD_FILE = (OSError, ValueError, TypeError, LookupError, OverflowError, RecursionError, struct.error)


@dataclass(frozen=True)
class Tier:
    step_s: float  # slot width in seconds
    slots: int  # ring size; retention = step_s * slots


# 2 h at 5 s, 2 days at 1 min, 30 days at 15 min
DEFAULT_TIERS = (Tier(5, 1440), Tier(60, 2880), Tier(900, 2880))

_Key = tuple[tuple[str, str], ...]


@dataclass(slots=True, eq=False)
class _Series:
    labels: dict[str, str]
    rings: list[array[float]]  # one per tier
    newest: list[int]  # newest slot index written, per tier
    sums: list[float]  # running sum and count of the newest slot, per tier: a slot holds its mean
    counts: list[int]
    last_t: float = -math.inf  # newest point, for latest() and prune()
    last_v: float = math.nan


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run


class TimeSeriesStore:
    """Thread-safe: the collector writes from a worker thread while API handlers and `/metrics` read."""

    def __init__(self, tiers: Sequence[Tier] = DEFAULT_TIERS, max_series: int = 200_000) -> None:
        """Tiers go from finest to coarsest. Every slot holds the mean of what fell in it, so a collector
        faster than tier 0's step still shows a one-round spike (as its share of the slot)."""
        if not tiers or any(t.step_s <= 0 or t.slots <= 0 for t in tiers):
            raise ValueError(f"tiers need a positive step and slot count: {tiers!r}")
        self.tiers = tuple(tiers)
        self.max_series = max_series
        self.refused = 0  # new series turned away because the store was full
        self._lock = threading.RLock()
        self._series: dict[str, dict[_Key, _Series]] = {}
        self._count = 0
        self._newest_t = -math.inf  # newest point ever written: query() picks its tier relative to it
        self._steps = [(i, t.step_s, t.slots) for i, t in enumerate(self.tiers)]  # unpacked once for add()
        self._blank = [array("f", [math.nan]) * t.slots for t in self.tiers]

    @_locked
    def add(self, name: str, labels: Mapping[str, str], t: float, value: float) -> None:
        if not (math.isfinite(value) and math.isfinite(t)):
            return
        key = tuple(sorted(labels.items()))
        s = self._series.get(name, {}).get(key)
        if s is None and (s := self._create(name, key)) is None:
            return
        if t >= s.last_t:
            s.last_t, s.last_v = t, value
            if t > self._newest_t:
                self._newest_t = t
        for i, step, slots in self._steps:
            idx, newest, ring = int(t // step), s.newest[i], s.rings[i]
            if idx > newest:
                if idx - newest > 1:
                    self._clear(i, ring, newest + 1, idx - 1)
                s.newest[i], s.sums[i], s.counts[i] = idx, value, 1
                ring[idx % slots] = value
            elif idx == newest:
                s.sums[i] += value
                s.counts[i] += 1
                ring[idx % slots] = s.sums[i] / s.counts[i]
            elif i == 0 and idx > newest - slots:  # a late point for an older, still-kept slot
                ring[idx % slots] = value

    def snapshot(self) -> threading.RLock:
        """Hold while reading several figures that must come from the same rounds."""
        return self._lock

    @_locked
    def add_round(self, t: float, points: Iterable[tuple[str, Mapping[str, str], float]]) -> None:
        """All of one collection round at once, so a reader never sees half a round (a fresh p50
        beside a missing p99)."""
        for name, labels, value in points:
            self.add(name, labels, t, value)

    @_locked
    def latest(
        self,
        name: str,
        match: Mapping[str, str] | None = None,
        max_age_s: float | None = None,
        now: float | None = None,
    ) -> list[tuple[dict[str, str], float, float]]:
        """(labels, t, value) of each matching series' newest point (the write with the largest t)."""
        cutoff = -math.inf
        if max_age_s is not None:
            cutoff = (time.time() if now is None else now) - max_age_s
        return [(dict(s.labels), s.last_t, s.last_v) for s in self._select(name, match) if s.last_t >= cutoff]

    @_locked
    def query(
        self, name: str, match: Mapping[str, str] | None, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Points (slot start time, value) with start <= time <= end, from the finest tier whose ring, as
        of the newest point in the store, still holds start's slot (the coarsest tier when none does)."""
        start, end = max(start, -_HORIZON), min(end, _HORIZON)
        i = next(
            (i for i, t in enumerate(self.tiers) if start // t.step_s > self._newest_t // t.step_s - t.slots),
            len(self.tiers) - 1,
        )
        step, slots = self.tiers[i].step_s, self.tiers[i].slots
        first, last = math.ceil(start / step), math.floor(end / step)
        out = []
        for s in self._select(name, match):
            ring, newest = s.rings[i], s.newest[i]
            points = []
            for idx in range(max(first, newest - slots + 1), min(last, newest) + 1):
                v = ring[idx % slots]
                if v == v:  # NaN marks an empty slot
                    points.append((idx * step, v))
            if points:
                out.append((dict(s.labels), points))
        return out

    @_locked
    def names(self) -> set[str]:
        return set(self._series)

    @_locked
    def series_count(self) -> int:
        return self._count

    @_locked
    def memory_bytes(self) -> int:
        """sys.getsizeof of every ring (array header + buffer), series record, label dict, key tuple with
        its pairs and label strings, per-tier bookkeeping lists, the index dicts and the blank rings.
        Strings shared with the caller or between series are counted once per series, so this errs high
        there; the ints and floats inside the bookkeeping lists (a few dozen bytes a series) are not."""
        size = sys.getsizeof
        total = size(self._series) + sum(map(size, self._blank))
        for by_key in self._series.values():
            total += size(by_key)
            for key, s in by_key.items():
                total += size(key) + sum(size(pair) + size(pair[0]) + size(pair[1]) for pair in key)
                total += size(s) + size(s.labels) + sum(map(size, s.rings))
                total += size(s.newest) + size(s.sums) + size(s.counts)
        return total

    @_locked
    def drop(self, match: Mapping[str, str]) -> int:
        """Forget every series, of any name, whose labels include all of match's pairs ({} drops all)."""
        return self._forget(lambda s: all(s.labels.get(k) == v for k, v in match.items()))

    @_locked
    def prune(self, now: float) -> int:
        """Forget series whose newest point is older than the longest tier's retention."""
        cutoff = now - max(t.step_s * t.slots for t in self.tiers)
        return self._forget(lambda s: s.last_t < cutoff)

    def save(self, path: Path) -> None:
        """Atomic: a reader sees the old file or the new one, never a mix, even after a crash. The lock
        is held while the snapshot goes into the page cache, not while it is synced to disk."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                with self._lock:
                    self._write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # the rename itself must reach the disk, or a power cut can bring back the old file
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write(self, f: BinaryIO) -> None:
        series = [(name, s) for name, by_key in self._series.items() for s in by_key.values()]
        header = json.dumps(
            {
                "tiers": [[t.step_s, t.slots] for t in self.tiers],
                "byteorder": sys.byteorder,
                "series": [[n, s.labels, s.last_t, s.last_v, s.newest, s.sums, s.counts] for n, s in series],
            }
        ).encode()
        crc = zlib.crc32(header)
        for _, s in series:
            for ring in s.rings:
                crc = zlib.crc32(ring, crc)
        f.write(_HEAD.pack(_MAGIC, _VERSION, len(header), crc))
        f.write(header)
        for _, s in series:
            for ring in s.rings:
                ring.tofile(f)

    @classmethod
    def load(
        cls, path: Path, tiers: Sequence[Tier] = DEFAULT_TIERS, max_series: int = 200_000
    ) -> TimeSeriesStore:
        """A missing file gives an empty store; so does an unreadable one, damaged, truncated, of another
        version or saved with other tiers, with one warning naming it. Never raises for file content."""
        store = cls(tiers, max_series)
        try:
            with open(path, "rb") as f:
                store._read(f)
        except FileNotFoundError:
            return store
        except _BAD_FILE as e:
            log.warning("time-series store %s not loaded, starting empty: %s", path, e)
            return cls(tiers, max_series)
        return store

    def _read(self, f: BinaryIO) -> None:
        magic, version, header_len, crc = _HEAD.unpack(f.read(_HEAD.size))
        if magic != _MAGIC or version != _VERSION:
            raise ValueError(f"not a version {_VERSION} store file")
        if header_len > os.fstat(f.fileno()).st_size:  # a damaged length must not allocate gigabytes
            raise ValueError("header length past the end of the file")
        raw = f.read(header_len)
        header = json.loads(raw)
        if header["tiers"] != [[t.step_s, t.slots] for t in self.tiers]:
            raise ValueError(f"saved with tiers {header['tiers']}, not {self.tiers}")
        if header["byteorder"] != sys.byteorder:
            raise ValueError(f"saved on a {header['byteorder']}-endian machine")
        seen = zlib.crc32(raw)
        n = len(self.tiers)
        for name, labels, last_t, last_v, newest, sums, counts in header["series"]:
            rings = []
            for blank in self._blank:
                ring = blank[:]  # exactly sized; fromfile() would over-allocate by ~6%
                if f.readinto(ring) != len(ring) * ring.itemsize:
                    raise ValueError("file ends inside a ring")
                seen = zlib.crc32(ring, seen)
                rings.append(ring)
            if not (isinstance(name, str) and isinstance(labels, dict)):
                raise ValueError("a series needs a name and a label dict")
            if not all(isinstance(v, str) for v in labels.values()):
                raise ValueError("label values must be strings")
            if not len(newest) == len(sums) == len(counts) == n:
                raise ValueError("per-tier bookkeeping does not match the tiers")
            s = self._create(name, tuple(sorted(labels.items())), rings)
            if s is not None:
                s.newest[:] = [int(x) for x in newest]  # in place: same list sizes as a series built by add()
                s.sums[:] = [float(x) for x in sums]
                s.counts[:] = [int(x) for x in counts]
                s.last_t, s.last_v = float(last_t), float(last_v)
                self._newest_t = max(self._newest_t, s.last_t)
        if f.read(1) or seen != crc:
            raise ValueError("checksum mismatch or trailing bytes")

    def _create(self, name: str, key: _Key, rings: list[array[float]] | None = None) -> _Series | None:
        if self._count >= self.max_series:
            self.refused += 1
            if self.refused == 1:
                log.warning("time-series store holds max_series=%d; refusing new series", self.max_series)
            return None
        if rings is None:
            rings = [b[:] for b in self._blank]
        n = len(self.tiers)
        s = _Series(dict(key), rings, [_NEVER] * n, [0.0] * n, [0] * n)
        self._series.setdefault(name, {})[key] = s
        self._count += 1
        return s

    def _select(self, name: str, match: Mapping[str, str] | None) -> list[_Series]:
        pairs = (match or {}).items()
        return [s for s in self._series.get(name, {}).values() if all(s.labels.get(k) == v for k, v in pairs)]

    def _clear(self, i: int, ring: array[float], first: int, last: int) -> None:
        """Empty the ring positions of slot indices first..last (at most one full lap)."""
        slots, blank = self.tiers[i].slots, self._blank[i]
        n = min(last - first + 1, slots)
        a = first % slots
        head = min(n, slots - a)
        ring[a : a + head] = blank[:head]
        ring[: n - head] = blank[: n - head]

    def _forget(self, doomed: Callable[[_Series], bool]) -> int:
        gone = 0
        for name in list(self._series):
            by_key = self._series[name]
            for key in [k for k, s in by_key.items() if doomed(s)]:
                del by_key[key]
                gone += 1
            if not by_key:
                del self._series[name]
        self._count -= gone
        return gone
