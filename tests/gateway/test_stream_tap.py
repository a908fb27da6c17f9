"""What the gateway reads of a streamed body: TTFT at the first generated output, not the first byte
(engines send a role-only event first), and the events that carry output, for a token count."""

import json

import pytest

from tideserve.gateway.proxy import _StreamTap


def event(delta: dict | None = None, compact: bool = True, **choice) -> bytes:
    body = {"choices": [{"index": 0, **({"delta": delta} if delta is not None else {}), **choice}]}
    separators = (",", ":") if compact else (", ", ": ")  # vLLM writes compact JSON, json.dumps spaced
    return b"data: " + json.dumps(body, separators=separators).encode() + b"\n\n"


ROLE = event({"role": "assistant", "content": ""})
FINISH = event({}, finish_reason="stop")
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("chunks", "first_output_at", "outputs"),
    [
        ([ROLE, event({"content": "Hi"}), event({"content": '"quoted'}), FINISH, DONE], 1, 2),
        ([ROLE + event({"content": "Hi"}) + event({"content": "!"}), FINISH + DONE], 0, 2),  # coalesced
        ([ROLE, event({"reasoning_content": "Let me think"}), event({"content": "4"}), DONE], 1, 2),
        ([ROLE, event({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}), FINISH, DONE], 1, 1),
        ([event(text="Once"), event(text=" upon"), event(text="", finish_reason="length"), DONE], 0, 2),
        ([ROLE, FINISH, DONE], None, 0),  # nothing generated: no TTFT
        ([ROLE, event({"content": "Hi"}, compact=False), event({"content": ""}, compact=False), DONE], 1, 1),
    ],
)
def test_first_output_and_output_events(chunks, first_output_at, outputs):
    written: list[bytes] = []
    tap = _StreamTap(written.append)
    seen_at = None
    for i, chunk in enumerate(chunks):
        tap(chunk)
        if seen_at is None and tap.first_at is not None:
            seen_at = i
    assert seen_at == first_output_at
    assert tap.outputs == outputs
    assert written == chunks  # passed through untouched
    assert tap.last == chunks[-1]
