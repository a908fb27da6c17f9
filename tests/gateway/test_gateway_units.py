"""Pure parts of the gateway: the wait queue, idempotency records, OpenAI request checks and error
bodies, the proxy's usage/limit helpers, and API key checks in static mode."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tideserve.api.auth import digest
from tideserve.gateway import idempotency
from tideserve.gateway.endpoints import RouteConfig, ServiceRoute
from tideserve.gateway.idempotency import IdempotencyStore, Record, request_fingerprint
from tideserve.gateway.keys import KeyCache, KeyInfo, bearer
from tideserve.gateway.openai_api import (
    DEFAULT_MAX_TOKENS,
    GatewayError,
    error_body,
    error_type,
    parse_request,
)
from tideserve.gateway.proxy import _limit_scopes, _usage_into
from tideserve.gateway.queueing import WaitQueue
from tideserve.gateway.ratelimit import Limits, LimitScope
from tideserve.gateway.telemetry import RequestRecord

# --- WaitQueue --------------------------------------------------------------------------------------


def wake_order(pushes: list[int], cancel: set[int]) -> list[int]:
    """Push waiters of the given ranks (cancelling those at the indices in `cancel`), wake them one
    by one and return the indices in the order they were woken."""

    async def main() -> list[int]:
        q = WaitQueue()
        futures = [q.push(rank)[1] for rank in pushes]
        for i in cancel:
            futures[i].cancel()
        assert len(q) == len(pushes) - len(cancel)
        order: list[int] = []
        for _ in range(len(pushes) + 2):  # more wakes than waiters: the extra ones are no-ops
            q.wake_one()
            woken = [i for i, f in enumerate(futures) if f.done() and not f.cancelled() and i not in order]
            assert len(woken) <= 1
            order += woken
        assert len(q) == 0
        return order

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("ranks", "cancel", "expected"),
    [
        ([], set(), []),
        ([1], set(), [0]),
        ([1, 1, 1], set(), [0, 1, 2]),  # FIFO within a class
        ([2, 1, 0], set(), [2, 1, 0]),  # higher priority (lower rank) first
        ([1, 0, 2, 0, 1], set(), [1, 3, 0, 4, 2]),
        ([1, 0, 2, 0, 1], {1}, [3, 0, 4, 2]),  # cancelled ones are skipped
        ([1, 0, 2, 0, 1], {1, 3, 2}, [0, 4]),
        ([0, 0], {0, 1}, []),
    ],
)
def test_wait_queue_order(ranks: list[int], cancel: set[int], expected: list[int]) -> None:
    assert wake_order(ranks, cancel) == expected


def test_wait_queue_repushed_waiter_keeps_its_place() -> None:
    async def main() -> list[str]:
        q = WaitQueue()
        seq_a, a = q.push(1)
        q.wake_one()  # a is woken, finds nothing free, waits again in its place
        assert a.done()
        waiters = {"b": q.push(1)[1], "c": q.push(1)[1]}
        waiters["a"] = q.push(1, seq_a)[1]
        waiters["hi"] = q.push(0)[1]  # a higher class still goes first
        assert len(q) == 4
        order: list[str] = []
        for _ in range(4):
            q.wake_one()
            order += [n for n, f in waiters.items() if f.done() and n not in order]
        return order

    assert asyncio.run(main()) == ["hi", "a", "b", "c"]


def test_wait_queue_done_futures_and_len() -> None:
    async def main() -> None:
        q = WaitQueue()
        _, a = q.push(0)
        _, b = q.push(1)
        _, c = q.push(2)
        assert len(q) == 3
        assert q.best_rank() == 0
        a.cancel()  # timed out
        assert len(q) == 2
        assert q.best_rank() == 1  # a done head is pruned
        b.set_result(None)  # done by someone else
        assert len(q) == 1
        q.wake_one()
        assert c.done() and not c.cancelled()
        assert len(q) == 0
        assert q.best_rank() is None

    asyncio.run(main())


def test_wait_queue_wake_all() -> None:
    async def main() -> None:
        q = WaitQueue()
        futures = [q.push(rank)[1] for rank in (2, 0, 1, 1)]
        futures[2].cancel()
        q.wake_all()
        assert [f.cancelled() for f in futures] == [False, False, True, False]
        assert all(f.done() for f in futures)
        assert len(q) == 0
        assert q.best_rank() is None
        q.wake_one()  # nothing left: no error
        _, late = q.push(1)
        assert len(q) == 1 and not late.done()

    asyncio.run(main())


def test_wait_queue_repush_after_cancel() -> None:
    async def main() -> None:
        q = WaitQueue()
        seq, first = q.push(0)
        first.cancel()
        _, again = q.push(0, seq)
        assert len(q) == 1
        q.wake_one()
        assert again.done()

    asyncio.run(main())


# --- IdempotencyStore / Record -----------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(idempotency.time, "monotonic", fake)
    return fake


def test_fingerprint_depends_on_path_and_body() -> None:
    fp = request_fingerprint("/v1/chat/completions", b"{}")
    assert fp == request_fingerprint("/v1/chat/completions", b"{}")
    assert fp != request_fingerprint("/v1/completions", b"{}")
    assert fp != request_fingerprint("/v1/chat/completions", b"{ }")
    assert len(fp) == 64


def test_claim_new_then_existing() -> None:
    store = IdempotencyStore()
    record, new = store.claim(1, "k", "fp")
    assert new and record.fingerprint == "fp" and not record.done
    again, new_again = store.claim(1, "k", "fp")
    assert again is record and not new_again


def test_claim_same_key_different_fingerprint_is_422() -> None:
    store = IdempotencyStore()
    store.claim(1, "k", "fp1")
    with pytest.raises(GatewayError) as info:
        store.claim(1, "k", "fp2")
    assert info.value.status == 422
    assert info.value.code == "idempotency_key_reused"
    assert "'k'" in info.value.message


@pytest.mark.parametrize(("key", "ok"), [("", False), ("x" * 256, False), ("x" * 255, True), ("x", True)])
def test_claim_key_length(key: str, ok: bool) -> None:
    store = IdempotencyStore()
    if ok:
        assert store.claim(1, key, "fp")[1]
    else:
        with pytest.raises(GatewayError) as info:
            store.claim(1, key, "fp")
        assert info.value.status == 400
        assert info.value.code == "invalid_idempotency_key"


def test_keys_are_scoped_by_key_id() -> None:
    store = IdempotencyStore()
    a, new_a = store.claim(1, "k", "fp1")
    b, new_b = store.claim(2, "k", "fp2")  # another tenant may use the same key for anything
    assert new_a and new_b and a is not b
    assert store.claim(1, "k", "fp1")[0] is a
    assert store.claim(2, "k", "fp2")[0] is b


def test_discard() -> None:
    store = IdempotencyStore()
    first, _ = store.claim(1, "k", "fp1")
    store.discard(1, "k")
    store.discard(1, "missing")  # no error
    second, new = store.claim(1, "k", "fp2")  # a repeat runs anew, even with another body
    assert new and second is not first


@pytest.mark.parametrize(
    ("finished", "elapsed", "is_new"),
    [
        (True, 599.0, False),
        (True, 600.0, False),
        (True, 600.5, True),
        (False, 10_000.0, False),  # still generating: never expires
    ],
)
def test_ttl_expiry_of_finished_records(clock: Clock, finished: bool, elapsed: float, is_new: bool) -> None:
    store = IdempotencyStore(ttl_s=600.0)
    record, _ = store.claim(1, "k", "fp")
    if finished:
        record.finish()
        assert record.finished_at == clock.now
    clock.now += elapsed
    again, new = store.claim(1, "k", "fp")
    assert new is is_new
    assert (again is record) is not is_new


def test_expired_key_may_be_reused_for_another_request(clock: Clock) -> None:
    store = IdempotencyStore(ttl_s=10.0)
    store.claim(1, "k", "fp1")[0].finish()
    clock.now += 11
    assert store.claim(1, "k", "fp2")[1]


def test_ttl_expiry_behind_an_unfinished_record(clock: Clock) -> None:
    store = IdempotencyStore(ttl_s=10.0)
    store.claim(1, "slow", "fp")  # never finishes
    store.claim(1, "k", "fp")[0].finish()
    clock.now += 11
    assert store.claim(1, "k", "fp")[1]


def test_max_records_evicts_oldest() -> None:
    store = IdempotencyStore(max_records=3)
    records = [store.claim(1, f"k{i}", "fp")[0] for i in range(10)]
    # The newest are kept...
    for i in (7, 8, 9):
        assert store.claim(1, f"k{i}", "fp") == (records[i], False)
    # ...the oldest are gone (a repeat starts anew).
    assert store.claim(1, "k0", "fp")[1]
    assert len(store._records) <= 4


def test_max_records_is_a_hard_bound() -> None:
    store = IdempotencyStore(max_records=3)
    for i in range(10):
        store.claim(1, f"k{i}", "fp")
    assert len(store._records) == 3


def test_record_follow_replays_then_follows_live() -> None:
    async def main() -> list[bytes]:
        record = Record("fp")
        record.start(200, [(b"content-type", b"text/event-stream")])
        record.append(b"one")
        record.append(b"two")
        got: list[bytes] = []

        async def reader() -> None:
            async for chunk in record.follow():
                got.append(chunk)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0)
        assert got == [b"one", b"two"]  # already generated part, at once
        record.append(b"three")
        await asyncio.sleep(0)
        assert got[-1] == b"three"
        record.append(b"four")
        record.append(b"five")
        assert not task.done()
        record.finish()
        await asyncio.wait_for(task, 1)
        assert record.done and record.started.is_set() and record.status == 200
        # A late follower gets everything and ends at once.
        late = [c async for c in record.follow()]
        assert late == got
        return got

    assert asyncio.run(main()) == [b"one", b"two", b"three", b"four", b"five"]


def test_record_follow_empty_finished() -> None:
    async def main() -> list[bytes]:
        record = Record("fp")
        record.finish()
        return [c async for c in record.follow()]

    assert asyncio.run(main()) == []


# --- parse_request ----------------------------------------------------------------------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMP = {"model": "m", "prompt": "hello"}
EMB = {"model": "m", "input": "text"}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("kind", "data", "code", "param"),
    [
        ("chat", b"{", "invalid_json", None),
        ("chat", b"", "invalid_json", None),
        ("chat", b"\xff\xfe{", "invalid_json", None),
        ("chat", raw([CHAT]), "invalid_json", None),
        ("chat", raw("model"), "invalid_json", None),
        ("chat", raw(None), "invalid_json", None),
        ("chat", raw({"messages": CHAT["messages"]}), "missing_model", "model"),
        ("chat", raw({**CHAT, "model": ""}), "missing_model", "model"),
        ("chat", raw({**CHAT, "model": 3}), "missing_model", "model"),
        ("completions", raw({"prompt": "x"}), "missing_model", "model"),
        ("embeddings", raw({"input": "x"}), "missing_model", "model"),
        ("chat", raw({**CHAT, "stream": "true"}), "invalid_type", "stream"),
        ("chat", raw({**CHAT, "stream": 1}), "invalid_type", "stream"),
        ("chat", raw({**CHAT, "max_tokens": 0}), "invalid_value", "max_tokens"),
        ("chat", raw({**CHAT, "max_tokens": -1}), "invalid_value", "max_tokens"),
        ("chat", raw({**CHAT, "max_tokens": True}), "invalid_value", "max_tokens"),
        ("chat", raw({**CHAT, "max_tokens": "5"}), "invalid_value", "max_tokens"),
        ("chat", raw({**CHAT, "max_tokens": 5.0}), "invalid_value", "max_tokens"),
        ("completions", raw({**COMP, "max_tokens": 0}), "invalid_value", "max_tokens"),
        ("chat", raw({**CHAT, "max_completion_tokens": 0}), "invalid_value", "max_completion_tokens"),
        ("chat", raw({**CHAT, "max_completion_tokens": False}), "invalid_value", "max_completion_tokens"),
        ("chat", raw({"model": "m"}), "invalid_type", "messages"),
        ("chat", raw({"model": "m", "messages": "hi"}), "invalid_type", "messages"),
        ("chat", raw({"model": "m", "messages": {"role": "user"}}), "invalid_type", "messages"),
        ("chat", raw({"model": "m", "messages": []}), "invalid_type", "messages"),
        ("chat", raw({"model": "m", "messages": ["hi"]}), "invalid_type", "messages"),
        ("chat", raw({"model": "m", "messages": [{"role": "user"}, "hi"]}), "invalid_type", "messages"),
        ("completions", raw({"model": "m"}), "invalid_type", "prompt"),
        ("completions", raw({"model": "m", "prompt": []}), "invalid_type", "prompt"),
        ("completions", raw({"model": "m", "prompt": 5}), "invalid_type", "prompt"),
        ("completions", raw({"model": "m", "prompt": {"text": "x"}}), "invalid_type", "prompt"),
        ("embeddings", raw({"model": "m"}), "missing_input", "input"),
        ("embeddings", raw({"model": "m", "input": None}), "missing_input", "input"),
        ("chat", raw({**CHAT, "stream_options": True}), "invalid_type", "stream_options"),
        ("chat", raw({**CHAT, "stream_options": "include_usage"}), "invalid_type", "stream_options"),
        ("completions", raw({**COMP, "stream_options": []}), "invalid_type", "stream_options"),
    ],
)
def test_parse_request_rejects(kind: str, data: bytes, code: str, param: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        parse_request(kind, data)
    assert info.value.status == 400
    assert info.value.code == code
    assert info.value.param == param


@pytest.mark.parametrize(
    ("kind", "body", "stream", "max_tokens", "prompt_text", "wants_usage"),
    [
        ("chat", CHAT, False, None, "user\nhi\n", False),
        ("chat", {**CHAT, "stream": True, "max_tokens": 7}, True, 7, "user\nhi\n", False),
        ("chat", {**CHAT, "max_completion_tokens": 9, "max_tokens": 7}, False, 9, "user\nhi\n", False),
        # max_completion_tokens is preferred; a bad max_tokens beside it is left to the engine
        ("chat", {**CHAT, "max_completion_tokens": 9, "max_tokens": 0}, False, 9, "user\nhi\n", False),
        ("chat", {**CHAT, "max_completion_tokens": None, "max_tokens": 4}, False, 4, "user\nhi\n", False),
        (
            "chat",
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "2"}],
                    },
                ],
            },
            False,
            None,
            "system\nbe brief\nuser\nq1\nassistant\na1\nuser\nq2\n",
            False,
        ),
        (
            "chat",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            True,
            None,
            "user\nhi\n",
            True,
        ),
        ("chat", {**CHAT, "stream_options": {"include_usage": False}}, False, None, "user\nhi\n", False),
        ("chat", {**CHAT, "stream_options": {}}, False, None, "user\nhi\n", False),
        ("chat", {**CHAT, "stream_options": None}, False, None, "user\nhi\n", False),
        ("completions", COMP, False, None, "hello", False),
        ("completions", {**COMP, "prompt": ["ab", "cd"], "max_tokens": 1}, False, 1, "abcd", False),
        ("completions", {**COMP, "prompt": [1, 2, 3]}, False, None, "", False),
        ("completions", {**COMP, "prompt": ""}, False, None, "", False),
        ("embeddings", EMB, False, None, "text", False),
        ("embeddings", {**EMB, "input": ["a", "b"]}, False, None, "", False),
        ("embeddings", {**EMB, "input": ""}, False, None, "", False),
    ],
)
def test_parse_request_accepts(
    kind: str,
    body: dict[str, Any],
    stream: bool,
    max_tokens: int | None,
    prompt_text: str,
    wants_usage: bool,
) -> None:
    req = parse_request(kind, raw(body))
    assert req.kind == kind
    assert req.body == body
    assert req.model == "m"
    assert req.stream is stream
    assert req.max_tokens == max_tokens
    assert req.prompt_text == prompt_text
    assert req.wants_usage is wants_usage


def test_default_max_tokens_is_positive() -> None:
    assert DEFAULT_MAX_TOKENS > 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_exceeded"),
        (499, "invalid_request_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_error_type(status: int, expected: str) -> None:
    assert error_type(status) == expected


@pytest.mark.parametrize(
    ("status", "message", "code", "param"),
    [
        (400, 'bad "thing" é', "invalid_json", None),
        (401, "no key", "invalid_api_key", None),
        (429, "slow down", "rate_limit_exceeded", "model"),
        (503, "busy", "no_capacity", None),
    ],
)
def test_error_body_shape(status: int, message: str, code: str, param: str | None) -> None:
    expected = {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    assert json.loads(error_body(status, message, code, param)) == expected
    err = GatewayError(status, message, code, param, headers={"Retry-After": "2"})
    assert json.loads(err.body()) == expected
    assert str(err) == message
    assert err.headers == {"Retry-After": "2"}
    assert GatewayError(status, message, code).headers == {}


# --- proxy helpers -----------------------------------------------------------------------------------


def new_record() -> RequestRecord:
    return RequestRecord("rid", "/v1/chat/completions", 0.0)


def sse(*events: dict[str, Any]) -> bytes:
    compact = (",", ":")
    return b"".join(b"data: " + json.dumps(e, separators=compact).encode() + b"\n\n" for e in events)


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


@pytest.mark.parametrize(
    ("tail", "found", "prompt", "completion"),
    [
        # A non-streamed JSON body (compact, as Starlette's JSONResponse writes it).
        (json.dumps({"choices": [], "usage": USAGE}, separators=(",", ":")).encode(), True, 11, 5),
        # Embeddings carry no completion tokens.
        (b'{"data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}', True, 4, 0),
        # SSE tail: content chunks with usage null, then the final usage chunk, then [DONE].
        (
            sse({"choices": [{"delta": {"content": "x"}}], "usage": None}, {"choices": [], "usage": USAGE})
            + b"data: [DONE]\n\n",
            True,
            11,
            5,
        ),
        # The last usage object wins.
        (
            sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, {"usage": USAGE})
            + b"data: [DONE]\n\n",
            True,
            11,
            5,
        ),
        # Final chunk without a trailing newline.
        (b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}', True, 2, 3),
        # No usage at all.
        (sse({"choices": [{"delta": {"content": "x"}}]}) + b"data: [DONE]\n\n", False, None, None),
        (sse({"choices": [], "usage": None}) + b"data: [DONE]\n\n", False, None, None),
        (b"", False, None, None),
        (b'{"choices":[]}', False, None, None),
        # A usage object cut off at the start of the tail, or without prompt_tokens.
        (b'"usage":{"prompt_tokens":2}}\n\ndata: [DONE]\n\n', False, None, None),
        (b'{"usage":{"completion_tokens":2}}', False, None, None),
        (b'{"usage":{"prompt_tokens":"many"}}', False, None, None),
    ],
)
def test_usage_into(tail: bytes, found: bool, prompt: int | None, completion: int | None) -> None:
    rec = new_record()
    assert _usage_into(rec, tail, sse=b"data:" in tail) is found
    assert rec.prompt_tokens == prompt
    assert rec.completion_tokens == completion


def test_usage_into_sse_with_default_json_separators() -> None:
    tail = (
        b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}}\n\ndata: [DONE]\n\n'
    )
    rec = new_record()
    assert _usage_into(rec, tail, sse=True)
    assert (rec.prompt_tokens, rec.completion_tokens) == (11, 5)


def test_usage_into_json_body_containing_data_prefix() -> None:
    body = json.dumps(
        {"choices": [{"message": {"content": "data: 1"}}], "usage": USAGE}, separators=(",", ":")
    ).encode()
    rec = new_record()
    assert _usage_into(rec, body, sse=False)
    assert (rec.prompt_tokens, rec.completion_tokens) == (11, 5)


KEY_LIMITS = Limits(requests_per_min=10)
SERVICE_LIMITS = Limits(tokens_per_min=1000, max_concurrent=3)
DIGEST = digest("sk-test")


def key_info(limits: Limits = Limits()) -> KeyInfo:  # noqa: B008
    return KeyInfo(id=7, name="team", scope="user", digest=DIGEST, limits=limits)


def route(limits: Limits = Limits()) -> ServiceRoute:  # noqa: B008
    return ServiceRoute("chat", created=1_700_000_000, config=RouteConfig(limits=limits))


@pytest.mark.parametrize(
    ("key", "svc", "expected"),
    [
        (None, route(), []),
        (key_info(), route(), []),
        (key_info(KEY_LIMITS), route(), [LimitScope(f"key:{DIGEST[:24]}", KEY_LIMITS)]),
        (None, route(SERVICE_LIMITS), [LimitScope("service:chat:1700000000", SERVICE_LIMITS)]),
        (key_info(), route(SERVICE_LIMITS), [LimitScope("service:chat:1700000000", SERVICE_LIMITS)]),
        (
            key_info(KEY_LIMITS),
            route(SERVICE_LIMITS),
            [
                LimitScope(f"key:{DIGEST[:24]}", KEY_LIMITS),
                LimitScope("service:chat:1700000000", SERVICE_LIMITS),
            ],
        ),
    ],
)
def test_limit_scopes(key: KeyInfo | None, svc: ServiceRoute, expected: list[LimitScope]) -> None:
    assert _limit_scopes(key, svc) == expected


def test_limit_scope_names_tell_apart_recreated_services() -> None:
    old = ServiceRoute("chat", created=1, config=RouteConfig(limits=SERVICE_LIMITS))
    new = ServiceRoute("chat", created=2, config=RouteConfig(limits=SERVICE_LIMITS))
    assert _limit_scopes(None, old)[0].name != _limit_scopes(None, new)[0].name


# --- keys ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("Basic abc", None),
        ("Token abc", None),
        ("abc", None),
        ("Bearerabc", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer  abc  ", "abc"),
        ("Bearer sk-1/2+3=", "sk-1/2+3="),
    ],
)
def test_bearer(header: str | None, expected: str | None) -> None:
    if expected is not None:
        assert bearer(header) == expected
        return
    with pytest.raises(GatewayError) as info:
        bearer(header)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"


def authenticate(cache: KeyCache, header: str | None, now: float | None = None) -> KeyInfo | None:
    return asyncio.run(cache.authenticate(header, now))


def test_static_cache_without_keys_is_open() -> None:
    cache = KeyCache(None)
    assert cache.open
    assert authenticate(cache, None) is None
    assert authenticate(cache, "garbage") is None
    assert KeyCache(None, {}).open


def test_static_key_authenticates() -> None:
    info = KeyInfo(id=1, name="ci", scope="user", priority="low")
    cache = KeyCache(None, {"sk-good": info})
    assert not cache.open
    assert authenticate(cache, "Bearer sk-good") is info


@pytest.mark.parametrize(
    "header", ["Bearer sk-bad", "Bearer sk-goo", "Bearer SK-GOOD", None, "Basic sk-good"]
)
def test_static_wrong_key_is_401(header: str | None) -> None:
    cache = KeyCache(None, {"sk-good": KeyInfo(id=1, name="ci", scope="user")})
    with pytest.raises(GatewayError) as info:
        authenticate(cache, header)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("expires_at", "now", "expired"),
    [
        (None, 10**10, False),
        (1000.0, 999.0, False),
        (1000.0, 1000.0, True),  # expiry is inclusive
        (1000.0, 5000.0, True),
    ],
)
def test_static_key_expiry(expires_at: float | None, now: float, expired: bool) -> None:
    info = KeyInfo(id=1, name="nightly", scope="user", expires_at=expires_at)
    cache = KeyCache(None, {"sk": info})
    if not expired:
        assert authenticate(cache, "Bearer sk", now) is info
        return
    with pytest.raises(GatewayError) as err:
        authenticate(cache, "Bearer sk", now)
    assert err.value.status == 401
    assert err.value.code == "key_expired"
    assert "'nightly'" in err.value.message
    assert "1970-01-01T00:16:40+00:00" in err.value.message


def test_static_key_expired_by_wall_clock() -> None:
    info = KeyInfo(id=1, name="old", scope="user", expires_at=time.time() - 60)
    cache = KeyCache(None, {"sk": info})
    with pytest.raises(GatewayError) as err:
        authenticate(cache, "Bearer sk")
    assert err.value.code == "key_expired"
    assert "'old'" in err.value.message
    fresh = KeyInfo(id=2, name="new", scope="user", expires_at=time.time() + 3600)
    assert authenticate(KeyCache(None, {"sk": fresh}), "Bearer sk") is fresh


@pytest.mark.parametrize(
    ("services", "service", "allowed"),
    [
        (None, "chat", True),
        (None, "", True),
        (frozenset({"chat"}), "chat", True),
        (frozenset({"chat", "embed"}), "embed", True),
        (frozenset({"chat"}), "embed", False),
        (frozenset({"chat"}), "Chat", False),
        (frozenset(), "chat", False),
    ],
)
def test_key_info_allows(services: frozenset[str] | None, service: str, allowed: bool) -> None:
    assert KeyInfo(id=1, name="k", scope="user", services=services).allows(service) is allowed
