"""Log rotation, search and follow: the pure decisions as tables, then the file work on real files
(including a writer holding the file open in append mode, as an engine does)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tideserve.observability.logs import (
    Follower,
    LineFilter,
    LogLine,
    Rotator,
    Source,
    Tail,
    line_time,
    merge,
    parse_since,
    rotate,
    rotated,
    rotated_numbers,
    search,
    shift_plan,
)

NOW = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)


def local(*args: int) -> datetime:
    return datetime(*args).astimezone()  # type: ignore[arg-type]


# --- pure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "keep", "plan"),
    [
        ([], 5, []),
        ([1], 5, [(1, 2)]),
        ([1, 2, 3, 4, 5], 5, [(5, None), (4, 5), (3, 4), (2, 3), (1, 2)]),
        ([3, 1], 5, [(3, 4), (1, 2)]),  # a gap is kept, order is what matters
        ([1, 7], 5, [(7, None), (1, 2)]),  # left over from a larger limit
        ([1], 1, [(1, None)]),
    ],
)
def test_shift_plan(existing: list[int], keep: int, plan: list[tuple[int, int | None]]) -> None:
    assert shift_plan(existing, keep) == plan


def test_rotated_numbers() -> None:
    names = ["a.log", "a.log.2", "a.log.1", "a.log.tmp", "a.log.x", "b.log.3", "a.log.10", "xa.log.4"]
    assert rotated_numbers("a.log", names) == [1, 2, 10]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"ts":"2030-03-10T11:59:58.123+00:00","request_id":"r1"}',
            datetime(2030, 3, 10, 11, 59, 58, 123000, UTC),
        ),
        ("2030-03-10 11:00:00,250 INFO tideserve.engine.server: ready", local(2030, 3, 10, 11, 0, 0, 250000)),
        ("2030-03-10T11:00:00Z started", datetime(2030, 3, 10, 11, 0, tzinfo=UTC)),
        ("2030-03-10T11:00:00+02:00 started", datetime(2030, 3, 10, 9, 0, tzinfo=UTC)),
        ("[2030-03-10 11:00:00] SGLang says hi", local(2030, 3, 10, 11, 0)),
        ("INFO 03-10 11:00:00 [api_server.py:1] vLLM", local(2030, 3, 10, 11, 0)),
        ("(APIServer pid=42) WARNING 03-10 11:00:00 [x.py:9] vLLM v1", local(2030, 3, 10, 11, 0)),
        ("INFO 12-31 23:00:00 [x.py:1] last year's", local(2029, 12, 31, 23, 0)),  # no year: not future
        ("Traceback (most recent call last):", None),
        ('  File "x.py", line 1, in <module>', None),
        ("2030-13-45 11:00:00 not a date", None),
        ('{"request_id":"r1"}', None),
        ("", None),
    ],
)
def test_line_time(text: str, expected: datetime | None) -> None:
    assert line_time(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        (" 2h ", NOW - timedelta(hours=2)),
        ("2030-03-10T10:00:00Z", datetime(2030, 3, 10, 10, tzinfo=UTC)),
        ("2030-03-10T10:00:00+01:00", datetime(2030, 3, 10, 9, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "says"), [("soon", "neither"), ("2030-03-10T10:00:00", "no zone"), ("-5m", "neither")]
)
def test_parse_since_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_since(text, NOW)


GW = '{"ts":"2030-03-10T11:00:00.000+00:00","request_id":"req-12","session_id":"alice","service":"chat"}'
ENGINE = (
    '{"ts":"2030-03-10T11:00:00.100+00:00","request_id":"req-12","session_id":"alice","finish_reason":"stop"}'
)
PLAIN = "2030-03-10 11:00:00,200 ERROR engine: request chatcmpl-req-12-abcd failed"


@pytest.mark.parametrize(
    ("flt", "text", "matches"),
    [
        (LineFilter(), PLAIN, True),
        (LineFilter(grep="ERROR engine"), PLAIN, True),
        (LineFilter(grep="error ENGINE"), PLAIN, True),  # any case
        (LineFilter(grep="warning"), PLAIN, False),
        (LineFilter(request_id="req-12"), GW, True),
        (LineFilter(request_id="req-12"), ENGINE, True),
        (LineFilter(request_id="req-12"), PLAIN, True),  # a plain line naming the id
        (LineFilter(request_id="req-1"), GW, False),  # a JSON line matches by its field, not a prefix
        (LineFilter(request_id="req-1"), PLAIN, True),  # a plain line cannot tell
        (LineFilter(request_id="req-99"), PLAIN, False),
        (LineFilter(request_id="alice"), GW, False),  # the session, not the request
        (LineFilter(session_id="alice"), GW, True),
        (LineFilter(session_id="alice"), ENGINE, True),
        (LineFilter(session_id="alic"), ENGINE, False),
        (LineFilter(session_id="alice", grep="stop"), ENGINE, True),
        (LineFilter(session_id="alice", grep="stop"), GW, False),  # every condition must hold
        (LineFilter(session_id="zoë"), json.dumps({"session_id": "zoë"}), True),  # escaped by the writer
        (LineFilter(request_id="req-12"), "{not json req-12", True),
    ],
)
def test_line_filter(flt: LineFilter, text: str, matches: bool) -> None:
    assert flt.matches(text) is matches


def test_gateway_source_owns_only_its_service() -> None:
    gw = Source("gateway", Path("gateway.log"), service="chat")
    assert gw.owns(GW)
    assert not gw.owns(GW.replace('"chat"', '"chat-2"'))
    assert Source("i1", Path("i1.log")).owns(PLAIN)


def test_merge_interleaves_by_time_and_keeps_the_newest() -> None:
    t = [NOW + timedelta(seconds=i) for i in range(4)]
    a = [LogLine("a", None, "a0"), LogLine("a", t[0], "a1"), LogLine("a", t[2], "a2")]
    b = [LogLine("b", t[1], "b1"), LogLine("b", t[3], "b2")]
    assert [x.text for x in merge([a, b])] == ["a0", "a1", "b1", "a2", "b2"]
    assert [x.text for x in merge([a, b], 2)] == ["a2", "b2"]


# --- files ---------------------------------------------------------------------------------------


def stamp(i: int) -> str:
    return (NOW + timedelta(seconds=i)).isoformat(timespec="milliseconds")


def json_line(i: int, **fields: str) -> str:
    return json.dumps({"ts": stamp(i), "n": i, **fields}, separators=(",", ":"))


def write(f, *lines: str) -> None:  # type: ignore[no-untyped-def]
    f.write("".join(line + "\n" for line in lines).encode())
    f.flush()


def test_rotate_copies_truncates_in_place_and_keeps_five(tmp_path: Path) -> None:
    path = tmp_path / "i1.log"
    with open(path, "ab") as engine:  # held open in append mode across rotations, as by an engine
        for round in range(7):
            write(engine, f"round {round}")
            rotate(path)
        write(engine, "live")
    assert path.read_text() == "live\n"  # the writer went on at the start of the truncated file
    assert [rotated(path, n).read_text() for n in range(1, 6)] == [f"round {r}\n" for r in (6, 5, 4, 3, 2)]
    assert not rotated(path, 6).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i1.log", *(f"i1.log.{n}" for n in range(1, 6))]


def test_rotator_rotates_only_instance_logs_over_the_limit(tmp_path: Path) -> None:
    big, small = tmp_path / "logs" / "chat" / "a.log", tmp_path / "logs" / "chat" / "b.log"
    gateway = tmp_path / "logs" / "gateway.log"  # rotates itself
    big.parent.mkdir(parents=True)
    for path, size in ((big, 200), (small, 50), (gateway, 500)):
        path.write_bytes(b"x" * size)
    Rotator(tmp_path, limit=100).run_once()
    assert big.stat().st_size == 0 and rotated(big, 1).stat().st_size == 200
    assert small.stat().st_size == 50 and not rotated(small, 1).exists()
    assert gateway.stat().st_size == 500 and not rotated(gateway, 1).exists()


def test_search_spans_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "i1.log"
    with open(path, "ab") as engine:
        for i in range(30):
            write(engine, json_line(i, request_id=f"r{i % 3}"))
            if i % 10 == 9:
                rotate(path)
        write(engine, json_line(30, request_id="r0"), "partial, not ended by a newline yet")
    src = [Source("i1", path)]
    assert [x.text for x in search(src, LineFilter(), 2)] == [
        json_line(30, request_id="r0"),
        "partial, not ended by a newline yet",
    ]
    found = search(src, LineFilter(request_id="r1"), 100)
    assert [json.loads(x.text)["n"] for x in found] == list(range(1, 30, 3))
    assert found[0].source == "i1" and found[0].time == NOW + timedelta(seconds=1)
    assert [json.loads(x.text)["n"] for x in search(src, LineFilter(request_id="r1"), 2)] == [25, 28]
    since = LineFilter(since=NOW + timedelta(seconds=27))
    assert [x.text for x in search(src, since, 100)][:3] == [
        json_line(i, request_id=f"r{i % 3}") for i in (27, 28, 29)
    ]


def test_untimed_lines_carry_the_time_of_the_line_before(tmp_path: Path) -> None:
    path = tmp_path / "i1.log"
    path.write_text(
        "banner before any time\n"
        "2030-03-10T11:00:00Z INFO loading\n"
        "2030-03-10T11:00:10Z ERROR boom\n"
        "Traceback (most recent call last):\n"
        "ValueError: boom\n"
        "2030-03-10T11:00:20Z INFO retrying\n"
    )
    src = [Source("i1", path)]
    boom = search(src, LineFilter(grep="boom"), 10)
    assert [(x.text, x.time) for x in boom] == [
        ("2030-03-10T11:00:10Z ERROR boom", datetime(2030, 3, 10, 11, 0, 10, tzinfo=UTC)),
        ("ValueError: boom", datetime(2030, 3, 10, 11, 0, 10, tzinfo=UTC)),
    ]
    later = search(src, LineFilter(since=datetime(2030, 3, 10, 11, 0, 5, tzinfo=UTC)), 10)
    assert [x.text for x in later] == [
        "2030-03-10T11:00:10Z ERROR boom",
        "Traceback (most recent call last):",
        "ValueError: boom",
        "2030-03-10T11:00:20Z INFO retrying",
    ]
    assert search(src, LineFilter(grep="banner"), 10) == [LogLine("i1", None, "banner before any time")]


def test_search_merges_sources_and_keeps_the_gateway_lines_of_the_service(tmp_path: Path) -> None:
    engine, gateway = tmp_path / "i1.log", tmp_path / "gateway.log"
    engine.write_text(json_line(1, request_id="r") + "\n" + json_line(3, request_id="x") + "\n")
    gateway.write_text(
        json_line(2, request_id="r", service="chat")
        + "\n"
        + json_line(4, request_id="r", service="other")
        + "\n"
    )
    sources = [Source("i1", engine), Source("gateway", gateway, service="chat")]
    found = search(sources, LineFilter(request_id="r"), 10)
    assert [(x.source, json.loads(x.text)["n"]) for x in found] == [("i1", 1), ("gateway", 2)]
    assert search([Source("gone", tmp_path / "missing.log")], LineFilter(), 10) == []


def test_tail_follows_through_copy_truncate_and_rename(tmp_path: Path) -> None:
    path = tmp_path / "i1.log"
    with open(path, "ab") as engine:
        write(engine, "old")
        engine.write(b"half a li")
        engine.flush()
        tail = Tail(path, at_end=True)
        assert tail.offset == 4  # after "old\n": the half line is followed, not cut
        assert tail.read() == []
        write(engine, "ne", "one")
        assert tail.read() == ["half a line", "one"]
        write(engine, "two", "three")  # unread when the rotation comes
        rotate(path)
        write(engine, "four")
        assert tail.read() == ["two", "three", "four"]
        write(engine, "five")
        assert tail.read() == ["five"]
    os.replace(path, rotated(path, 1))  # how the gateway's handler rotates
    with open(path, "ab") as gateway:
        write(gateway, "six")
        assert tail.read() == ["six"]
    tail.close()


def test_tail_of_a_file_not_there_yet_reads_it_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "i1.log"
    tail = Tail(path, at_end=True)
    assert tail.read() == []
    path.write_text("first\nsecond\n")
    assert tail.read() == ["first", "second"]
    tail.close()


def test_follower_backlog_then_new_lines_without_gap_or_repeat(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    with open(a, "ab") as fa:
        write(
            fa, json_line(1, request_id="r"), json_line(2, request_id="other"), json_line(3, request_id="r")
        )
        follower = Follower([Source("a", a)], LineFilter(request_id="r"))
        write(fa, json_line(4, request_id="r"))  # after the follow began: new, not backlog
        assert [json.loads(x.text)["n"] for x in follower.backlog(1)] == [3]
        assert [json.loads(x.text)["n"] for x in follower.poll()] == [4]
        b.write_text(json_line(5, request_id="r") + "\n")  # a new instance, read from its start
        assert follower.track([Source("a", a), Source("b", b)]) == []
        write(fa, json_line(6, request_id="r"), "untimed r line")
        found = follower.poll()
        assert [(x.source, x.text) for x in found] == [
            ("b", json_line(5, request_id="r")),
            ("a", json_line(6, request_id="r")),
            ("a", "untimed r line"),
        ]
        assert found[2].time == NOW + timedelta(seconds=6)
        write(fa, json_line(7, request_id="r"))
        gone = follower.track([Source("b", b)])  # a's last lines are read as it leaves
        assert [x.text for x in gone] == [json_line(7, request_id="r")]
        assert follower.sources == [Source("b", b)]
    follower.close()
