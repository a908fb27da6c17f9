"""Closed-loop streaming load against an OpenAI-compatible server.

Each request is recorded as it streams, so a level cut short at its time limit still counts the tokens
that arrived inside the measurement window.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

from prompts import make_prompt


@dataclass
class RequestRecord:
    """One streamed request; token times are appended as chunks arrive (perf_counter seconds)."""

    sent_at: float
    token_times: list[float] = field(default_factory=list)
    completion_tokens: int | None = None  # from the final usage chunk, when the server sends one
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent_at if self.token_times else None

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.token_times)

    def tokens_before(self, deadline: float) -> float:
        """Tokens received by `deadline`, scaled by usage/chunks in case a chunk carries several tokens."""
        if not self.token_times:
            return 0.0
        scale = self.tokens / len(self.token_times)
        return scale * sum(1 for t in self.token_times if t <= deadline)

    def decode_rate(self) -> float | None:
        """(tokens - 1) / (t_last - t_first): the steady decode speed, prefill excluded."""
        if len(self.token_times) < 2:
            return None
        return (self.tokens - 1) / (self.token_times[-1] - self.token_times[0])


def completion_body(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": "default",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _chunk_text(chunk: dict) -> str:
    text = ""
    for choice in chunk.get("choices") or []:
        text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


async def stream_request(client: httpx.AsyncClient, path: str, body: dict, record: RequestRecord) -> None:
    """Send one streaming request, filling `record` in place (so cancellation keeps what arrived)."""
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if _chunk_text(chunk):
                    record.token_times.append(time.perf_counter())
                if usage := chunk.get("usage"):
                    record.completion_tokens = usage.get("completion_tokens")
                    record.prompt_tokens = usage.get("prompt_tokens")
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"


def make_client(base_url: str, connections: int, timeout_s: float) -> httpx.AsyncClient:
    # trust_env=False: never route benchmark load through a proxy from the environment.
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )


@dataclass
class LevelResult:
    concurrency: int
    duration_s: float
    requests: int
    completed: int
    errors: int
    output_tokens: float
    tok_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    prompt_tokens_mean: float | None
    first_error: str | None
    client_cpu_s: float | None = None  # benchmark-process CPU over the level and its drain (cores are shared)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(concurrency: int, start: float, duration_s: float, records: list[RequestRecord]) -> LevelResult:
    deadline = start + duration_s
    ttfts = [r.ttft for r in records if r.ttft is not None]
    prompts = [r.prompt_tokens for r in records if r.prompt_tokens is not None]
    errors = [r.error for r in records if r.error]
    tokens = sum(r.tokens_before(deadline) for r in records)
    return LevelResult(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=len(records),
        completed=sum(1 for r in records if r.completion_tokens is not None and not r.error),
        errors=len(errors),
        output_tokens=tokens,
        tok_s=tokens / duration_s,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        prompt_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
        first_error=errors[0] if errors else None,
    )


async def closed_loop(
    client: httpx.AsyncClient,
    path: str,
    *,
    concurrency: int,
    duration_s: float,
    max_tokens: int,
    max_requests: int,
    drain_s: float,
    seed: str,
) -> LevelResult:
    """N workers send requests back to back until `duration_s` or `max_requests` is reached.

    Requests in flight at the deadline are allowed `drain_s` to finish (so the next level starts on an idle
    server) but only tokens that arrived before the deadline count.
    """
    records: list[RequestRecord] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline and len(records) < max_requests:
            record = RequestRecord(sent_at=time.perf_counter())
            records.append(record)
            body = completion_body(make_prompt(f"{seed}/{len(records)}"), max_tokens)
            await stream_request(client, path, body, record)
            if record.error:
                await asyncio.sleep(0.1)  # a failing server should not turn the loop into a busy spin

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(workers, timeout=duration_s + drain_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result = summarize(concurrency, start, duration_s, records)
    result.client_cpu_s = time.process_time() - cpu_start
    return result
