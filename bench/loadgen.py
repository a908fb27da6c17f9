"""Closed-loop streaming load against an OpenAI-compatible server's /v1/completions.

Each request is recorded as it streams (a timestamp per content chunk, token counts from the final usage
chunk), so a request cancelled at a time limit still counts what had arrived.
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


COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class Target:
    client: httpx.AsyncClient  # base_url set to the server
    model: str  # an id from the server's /v1/models: tideserve rejects any other name


async def served_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _chunk_text(chunk: dict) -> str:
    return "".join(choice.get("text") or "" for choice in chunk.get("choices") or [])


async def stream_completion(target: Target, prompt: str, max_tokens: int, record: RequestRecord) -> None:
    """Send one streaming completion, filling `record` in place (so cancellation keeps what arrived)."""
    body = completion_body(target.model, prompt, max_tokens)
    try:
        async with target.client.stream("POST", COMPLETIONS, json=body) as response:
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
    """One concurrency level. `tok_s` counts every token of every request over the whole level, drain
    included: on 2 cores one round of 32 prompts can take longer than the window, and a window-only count
    would then measure the prefill burst alone. `window_tok_s` counts only tokens inside the window."""

    concurrency: int
    duration_s: float  # window in which requests were started
    elapsed_s: float  # level start to its last token
    requests: int
    completed: int
    errors: int
    output_tokens: int
    tok_s: float
    window_tok_s: float | None
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
    ttfts = [r.ttft for r in records if r.ttft is not None]
    prompts = [r.prompt_tokens for r in records if r.prompt_tokens is not None]
    errors = [r.error for r in records if r.error]
    tokens = sum(r.tokens for r in records)
    elapsed = max((r.token_times[-1] for r in records if r.token_times), default=start + duration_s) - start
    return LevelResult(
        concurrency=concurrency,
        duration_s=duration_s,
        elapsed_s=elapsed,
        requests=len(records),
        completed=sum(1 for r in records if r.completion_tokens is not None and not r.error),
        errors=len(errors),
        output_tokens=tokens,
        tok_s=tokens / elapsed,
        window_tok_s=sum(r.tokens_before(start + duration_s) for r in records) / duration_s,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        prompt_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
        first_error=errors[0] if errors else None,
    )


async def closed_loop(
    target: Target,
    *,
    concurrency: int,
    duration_s: float,
    max_tokens: int,
    max_requests: int,
    drain_s: float,
    seed: str,
) -> LevelResult:
    """N workers send requests back to back until `duration_s` or `max_requests` is reached.

    Requests in flight at the deadline get `drain_s` to finish (so every round is counted whole and the
    next level starts on an idle server); past that they are cancelled and count what had arrived.
    """
    records: list[RequestRecord] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline and len(records) < max_requests:
            record = RequestRecord(sent_at=time.perf_counter())
            records.append(record)
            await stream_completion(target, make_prompt(f"{seed}/{len(records)}"), max_tokens, record)
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
