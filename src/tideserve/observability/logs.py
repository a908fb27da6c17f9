"""Logs of instances and gateways: rotation, search across rotated files, and following new lines.

An engine process writes its stdout and stderr straight to a file the platform opened for it in
append mode, and it outlives a control-plane crash, so nobody can tell it to reopen the file. The
control plane therefore rotates by copy-truncate (as logrotate's `copytruncate` does): copy NAME to
NAME.1 (older copies shift to NAME.2 ...), then truncate NAME in place; the engine's next append
lands at the new end. The gateway rotates its own access log by renaming (RotatingFileHandler).
Readers cope with both: a search reads NAME.k ... NAME.1, NAME as one stream, and a follower notices
a truncation (the rest of what it had not read is in NAME.1) or a rename (it drains the old file).

The decisions (which renames make room, what time a line carries, whether a line matches) are pure
functions at the top; the file work is below them.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from tideserve.durations import duration_seconds

log = logging.getLogger("tideserve.logs")

# Per file. Six files (the live one and KEEP copies) bound an instance's logs to 300 MiB: hours of
# request lines at a hundred requests a second, days at ordinary load, and a full search for one
# request id still reads it in seconds.
MAX_BYTES = 50 * 2**20
KEEP = 5
ENV_MAX_BYTES = "TIDESERVE_LOG_MAX_BYTES"  # a smaller limit for a small disk (or a test)
# Checking sizes is a stat per file; an engine rarely writes more than a few MiB in this time.
ROTATE_EVERY_S = 5.0
FOLLOW_POLL_S = 0.5
RESCAN_S = 5.0  # how soon a follow of a service takes in a new instance
GATEWAY = "gateway"  # the source name (and file name prefix) of gateway access logs
_READ_BLOCK = 1 << 20
_FOLLOW_MAX_READ = 8 << 20  # per poll: a flood is followed in steps, not read into memory at once


# --- pure decisions ------------------------------------------------------------------------------


def shift_plan(existing: Collection[int], keep: int = KEEP) -> list[tuple[int, int | None]]:
    """Renames (n -> n+1) and deletions (n -> None) that free NAME.1 for a new copy and leave at most
    `keep` copies; NAME.1 is the newest. In this order, no rename lands on a file still there."""
    return [(n, n + 1 if n < keep else None) for n in sorted(existing, reverse=True)]


def rotated_numbers(base: str, names: Iterable[str]) -> list[int]:
    """The k of each BASE.k among `names`, ascending."""
    form = re.compile(re.escape(base) + r"\.([0-9]{1,4})")
    return sorted(int(m.group(1)) for name in names if (m := form.fullmatch(name)))


# A line's own time, at its start: our JSON lines ({"ts": ...}), Python's logging and ISO forms with an
# optional '[' (SGLang), and vLLM's "INFO 01-31 12:00:00" (after an optional "(EngineCore pid=7) ").
_STAMP = re.compile(
    r'\{"ts":"(?P<iso>[^"]{10,40})"'
    r"|\[?(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[ T](?P<clock>[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]{1,6})?)"
    r"(?P<zone>Z|[+-][0-9]{2}:?[0-9]{2})?"
    r"|(?:\([^)]{0,80}\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<md>[0-9]{2}-[0-9]{2}) "
    r"(?P<hms>[0-9]{2}:[0-9]{2}:[0-9]{2})"
)


def _stamp_time(m: re.Match[str], now: datetime) -> datetime | None:
    """Times without a zone are this machine's local time, as the engines write them."""
    try:
        if iso := m.group("iso"):
            t = datetime.fromisoformat(iso)
        elif date := m.group("date"):
            zone = m.group("zone") or ""
            t = datetime.fromisoformat(f"{date}T{m.group('clock').replace(',', '.')}{zone}")
        else:  # no year: the latest such time not after now (a day of slack for clocks)
            t = datetime.fromisoformat(f"{now.year}-{m.group('md')}T{m.group('hms')}").astimezone()
            if t > now + timedelta(days=1):
                t = t.replace(year=now.year - 1)
    except ValueError:
        return None
    return t if t.tzinfo else t.astimezone()


def line_time(text: str, now: datetime) -> datetime | None:
    """The time a line starts with, or None when it has none (a traceback line, a bare print)."""
    m = _STAMP.match(text)
    return _stamp_time(m, now) if m else None


def parse_since(text: str, now: datetime) -> datetime:
    """A time ago ('15m', '2h', '1d') or an ISO 8601 time with a zone; ValueError says what is wrong."""
    if (seconds := duration_seconds(text)) is not None:
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time ago (15m, 2h, 1d) nor an ISO time (2030-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no zone: add one, e.g. {text.strip()}Z")
    return when


def _field_matches(text: str, key: str, value: str, needles: tuple[str, ...]) -> bool:
    if not any(n in text for n in needles):
        return False
    if not text.startswith("{"):
        return True
    try:
        obj = json.loads(text)
    except ValueError:
        return True
    return not isinstance(obj, dict) or obj.get(key) == value


@dataclass(frozen=True)
class LineFilter:
    """Which lines a query wants; every given condition must hold. `grep` is a case-insensitive
    substring. `request_id` and `session_id` match a JSON line by its field of that name (so one id
    does not match another that contains it) and any other line that contains the id. `since`
    compares a line's time, its own or that of the timed line before it; lines before any timed
    line pass."""

    grep: str | None = None
    request_id: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    _grep: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.grep is not None:
            object.__setattr__(self, "_grep", re.compile(re.escape(self.grep), re.IGNORECASE))

    @property
    def searching(self) -> bool:
        """Looking for particular lines (rather than reading the latest ones)."""
        return self.grep is not None or self.request_id is not None or self.session_id is not None

    def matches(self, text: str) -> bool:
        if self._grep is not None and self._grep.search(text) is None:
            return False
        for key, value in (("request_id", self.request_id), ("session_id", self.session_id)):
            # A JSON writer may escape what the id holds (non-ASCII, quotes): look for both forms.
            if value is not None and not _field_matches(text, key, value, (value, json.dumps(value)[1:-1])):
                return False
        return True


@dataclass(frozen=True)
class Source:
    """One log: an instance's (name = instance id) or a gateway's, of which only the lines of
    `service` belong to a service's logs."""

    name: str
    path: Path
    service: str | None = None

    def owns(self, text: str) -> bool:
        return self.service is None or f'"service":{json.dumps(self.service)}' in text


@dataclass(frozen=True)
class LogLine:
    source: str
    time: datetime | None
    text: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "source": self.source,
            "time": self.time.isoformat(timespec="milliseconds") if self.time else None,
            "line": self.text,
        }


_EPOCH = datetime.min.replace(tzinfo=UTC)


def merge(per_source: Iterable[Sequence[LogLine]], limit: int | None = None) -> list[LogLine]:
    """The last `limit` lines of several sources, each already in order, interleaved by time; lines
    without a time come first (they are the oldest of their source)."""
    merged = list(heapq.merge(*per_source, key=lambda line: line.time or _EPOCH))
    return merged if limit is None else merged[-limit:]


# --- where logs live -----------------------------------------------------------------------------


def logs_dir(home: Path) -> Path:
    return home / "logs"


def service_log_dir(home: Path, service: str) -> Path:
    """Where the platform writes the instance logs of a service (one file per instance id)."""
    return logs_dir(home) / service


def gateway_log_file(home: Path, replica: str | None = None) -> Path:
    """The access log of `tideserve up`'s gateway, or of a `tideserve gateway` replica (named by host
    and port: a restarted replica appends to its file, two replicas of one host never share one)."""
    if replica is None:
        return logs_dir(home) / f"{GATEWAY}.log"
    return logs_dir(home) / f"{GATEWAY}-{re.sub(r'[^A-Za-z0-9.-]', '-', replica)}.log"


def gateway_sources(home: Path, service: str) -> list[Source]:
    """Service names are DNS labels (no dots), so no service directory matches this pattern."""
    return [Source(p.stem, p, service) for p in sorted(logs_dir(home).glob(f"{GATEWAY}*.log"))]


def max_bytes() -> int:
    raw = os.environ.get(ENV_MAX_BYTES)
    if raw is None:
        return MAX_BYTES
    if raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    log.warning("%s=%r is not a positive number of bytes; using %d", ENV_MAX_BYTES, raw, MAX_BYTES)
    return MAX_BYTES


# --- rotation ------------------------------------------------------------------------------------


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _backups(path: Path) -> list[int]:
    try:
        return rotated_numbers(path.name, os.listdir(path.parent))
    except OSError:
        return []


def rotate(path: Path, keep: int = KEEP) -> None:
    """Copy-truncate `path`. The copy goes through a temporary name, so a crash mid-copy leaves no
    half NAME.1; lines appended while copying are copied too, which leaves only the instant between
    the last read and the truncation for a line to be lost in."""
    for src, dst in shift_plan(_backups(path), keep):
        if dst is None:
            rotated(path, src).unlink(missing_ok=True)
        else:
            os.replace(rotated(path, src), rotated(path, dst))
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as live, open(tmp, "wb") as copy:
        while chunk := live.read(_READ_BLOCK):
            copy.write(chunk)
        os.replace(tmp, rotated(path, 1))
        while chunk := live.read(_READ_BLOCK):  # appended since the first pass reached the end
            copy.write(chunk)
        os.truncate(path, 0)


class Rotator:
    """Every ROTATE_EVERY_S, copy-truncates each instance log over the limit. Its own thread: copying
    50 MiB must not stall the event loop the gateway shares. Gateway logs rotate themselves."""

    def __init__(self, home: Path, limit: int | None = None, interval: float = ROTATE_EVERY_S) -> None:
        self.dir = logs_dir(home)
        self.limit = limit or max_bytes()
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-rotator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def run_once(self) -> None:
        for path in sorted(self.dir.glob("*/*.log")):
            try:
                if path.stat().st_size > self.limit:
                    rotate(path)
                    log.info("rotated %s", path)
            except OSError as e:  # one unreadable file must not stop the others' rotation
                log.warning("cannot rotate %s: %s", path, e)


# --- search --------------------------------------------------------------------------------------


def _lines_backwards(path: Path, end: int | None = None) -> Iterator[bytes]:
    """The non-empty lines of one file, last first; `end` stops reading at that offset."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - `with f` below; a missing file is an empty log
    except OSError:
        return
    with f:
        pos = f.seek(0, os.SEEK_END) if end is None else min(end, os.fstat(f.fileno()).st_size)
        head = b""
        while pos > 0:
            step = min(_READ_BLOCK, pos)
            pos -= step
            f.seek(pos)
            pieces = (f.read(step) + head).split(b"\n")
            head = pieces[0]
            for line in reversed(pieces[1:]):
                if line:
                    yield line
        if head:
            yield head


def _source_backwards(path: Path, end: int | None) -> Iterator[str]:
    """The live file (up to `end`), then NAME.1, NAME.2 ...: the whole log, newest line first."""
    files = [(path, end), *((rotated(path, n), None) for n in _backups(path))]
    for p, stop in files:
        for raw in _lines_backwards(p, stop):
            yield raw.decode("utf-8", "replace")


def search_source(
    source: Source, flt: LineFilter, limit: int, now: datetime, end: int | None = None
) -> list[LogLine]:
    """The last `limit` matching lines of one source, oldest first. Reads backwards and stops as soon
    as it has them, or at the first line older than `since`: a tail of a large log reads its end."""
    found: list[LogLine] = []  # newest first
    untimed: list[str] = []  # lines (newest first) that follow a timed line not yet reached
    done = False
    for text in _source_backwards(source.path, end):
        m = _STAMP.match(text)
        if m is None:
            untimed.append(text)
            continue
        group = [*untimed, text]  # newest first; all carry this line's time
        untimed = []
        wanted = [t for t in group if source.owns(t) and flt.matches(t)]
        if not wanted and flt.since is None:
            continue
        when = _stamp_time(m, now)
        if flt.since is not None and when is not None and when < flt.since:
            done = True
            break
        found += (LogLine(source.name, when, t) for t in wanted)
        if len(found) >= limit:
            break
    if not done and len(found) < limit:
        found += (LogLine(source.name, None, t) for t in untimed if source.owns(t) and flt.matches(t))
    return found[:limit][::-1]


def search(
    sources: Sequence[Source], flt: LineFilter, limit: int, ends: Mapping[str, int] | None = None
) -> list[LogLine]:
    """The last `limit` lines of these sources matching `flt`, oldest first; `ends` stops a source's
    live file at an offset (where a follower takes over)."""
    now = datetime.now(UTC)
    ends = ends or {}
    return merge((search_source(s, flt, limit, now, ends.get(s.name)) for s in sources), limit)


# --- follow --------------------------------------------------------------------------------------


class Tail:
    """New complete lines of one log file as they are appended. Survives copy-truncate (the file
    shrinks below what was read: the unread rest is in NAME.1) and rotation by rename (the path is
    another file: the old one is drained first), as `tail -F` does. A file not there yet is read
    from its start once it appears."""

    def __init__(self, path: Path, at_end: bool) -> None:
        self.path = path
        self.offset = 0  # read up to here
        self._partial = b""
        self._file: BinaryIO | None = None
        self._inode = 0
        self._open()
        if self._file is not None and at_end:
            self.offset = self._line_start_near_end(self._file)

    def _open(self) -> None:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held across reads; close() closes it
        except OSError:
            self._file = None
            return
        self._inode = os.fstat(self._file.fileno()).st_ino
        self.offset = 0

    @staticmethod
    def _line_start_near_end(f: BinaryIO) -> int:
        """Just after the last complete line: a line being written is followed, not cut in two."""
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - 64 * 1024)
        f.seek(start)
        cut = f.read(size - start).rfind(b"\n")
        return start + cut + 1 if cut >= 0 else (0 if start == 0 else size)

    def read(self) -> list[str]:
        data = self._drain()
        try:
            st = os.stat(self.path)
        except OSError:
            st = None  # removed (its service was deleted): what it held is read above
        if st is not None and self._file is not None:
            if st.st_ino != self._inode:
                if len(data) < _FOLLOW_MAX_READ:  # the old file is drained: go on with the new one
                    self._file.close()
                    self._open()
                    data += self._drain()
            elif st.st_size < self.offset:  # copy-truncated: NAME.1 holds the rest we had not read
                data += _read_from(rotated(self.path, 1), self.offset)
                self.offset = 0
                data += self._drain()
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        return [p.decode("utf-8", "replace") for p in pieces if p]

    def _drain(self) -> bytes:
        if self._file is None:
            self._open()
            if self._file is None:
                return b""
        self._file.seek(self.offset)
        data = self._file.read(_FOLLOW_MAX_READ)
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_FOLLOW_MAX_READ)
    except OSError:
        return b""


class Follower:
    """Several sources followed together: first the backlog (the last matching lines before the
    follow began, read up to where each tail starts, so no line is shown twice or skipped), then the
    new matching lines of each poll. `track` takes the current sources: a new one (a new instance) is
    read from its start, a gone one is read a last time and closed."""

    def __init__(self, sources: Sequence[Source], flt: LineFilter) -> None:
        self.flt = flt
        self._tails = {s.name: (s, Tail(s.path, at_end=True)) for s in sources}
        self._times: dict[str, datetime | None] = {}  # the last time seen per source, for untimed lines

    @property
    def sources(self) -> list[Source]:
        return [s for s, _ in self._tails.values()]

    def backlog(self, limit: int) -> list[LogLine]:
        ends = {name: tail.offset for name, (_, tail) in self._tails.items()}
        return search(self.sources, self.flt, limit, ends)

    def track(self, sources: Sequence[Source]) -> list[LogLine]:
        now = datetime.now(UTC)
        current = {s.name: s for s in sources}
        last: list[list[LogLine]] = []
        for name in [n for n in self._tails if n not in current]:
            source, tail = self._tails.pop(name)
            last.append(self._matching(source, tail.read(), now))
            tail.close()
        for name, source in current.items():
            if name not in self._tails:
                self._tails[name] = (source, Tail(source.path, at_end=False))
        return merge(last)

    def poll(self) -> list[LogLine]:
        now = datetime.now(UTC)
        return merge(self._matching(source, tail.read(), now) for source, tail in self._tails.values())

    def _matching(self, source: Source, texts: list[str], now: datetime) -> list[LogLine]:
        out = []
        for text in texts:
            when = line_time(text, now) or self._times.get(source.name)
            self._times[source.name] = when
            if source.owns(text) and self.flt.matches(text):
                out.append(LogLine(source.name, when, text))
        return out

    def close(self) -> None:
        for _, tail in self._tails.values():
            tail.close()
