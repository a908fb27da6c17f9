"""A fake OpenAI-compatible engine for router benchmarks (bench/gateway.py): no model, fixed timings.

Streams exactly `max_tokens` chunks shaped like vLLM's (one word each), after a fixed TTFT and with a
fixed inter-token delay, then a usage chunk when `stream_options.include_usage` is set, then
`data: [DONE]`. Serves what routers poll: `/health`, `/v1/models`, `/metrics` (vLLM v1 names) and,
for sglang-router / vllm-router, `/get_load`, `/get_model_info`, `/model_info`, `/get_server_info`,
`/server_info` (sglang-router reads `model_path` there and loads that tokenizer: point
`--tokenizer-dir` at a local one), and vLLM's `/v1/chat/completions/render`, `/v1/completions/render`
and `/tokenize` (vllm-router's cache_aware policy asks every worker to render each prompt to token
ids; here a token is 4 bytes of the rendered prompt). `/stats` (JSON: requests, prompt and cached
tokens, CPU, calls per path) and `POST /reset` are for the benchmark itself.

With `--prefix-cache` each process models a prefix cache: the prompt text is cut into blocks of
`--block-tokens` "tokens" (a token is 4 characters), each block is named by a hash chained over the
blocks before it, and an LRU of `--cache-blocks` block hashes is kept. The cached part of a prompt is
its longest run of leading blocks present in the LRU; TTFT = `--ttft-ms` + `--per-token-ms` x uncached
tokens. Within a prompt the tail is the least recent, so a full cache drops the ends of old prompts
first and keeps their (shared) heads, as engines do: vLLM frees a request's blocks tail first, SGLang's
radix cache evicts leaves.

It must never be the bottleneck of a benchmark, so it is a bare asyncio protocol over httptools: each
chunk is precomputed bytes written from a `call_later` callback, with no coroutine per chunk.
Run it with the project's virtualenv (stdlib + uvloop + httptools only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import OrderedDict, deque

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the project's virtualenv
    uvloop = None

CHARS_PER_TOKEN = 4
_WORDS = (  # noqa: SIM905 - one word per streamed token
    "time year people way day thing world school state family group country problem hand part place "
    "case week company system program question work number night point home water room mother area "
    "money story fact month right study book job word business issue side kind head house service"
).split()


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _table(kind: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Per word: the tail of a middle chunk, of the first chunk (chat adds the role) and of the last."""
    mid, first, last = [], [], []
    for word in _WORDS:
        text = json.dumps(" " + word)
        if kind == "chat":
            body = b'"delta":{"content":%s},"logprobs":null,"finish_reason":%s}]}\n\n'
            first_body = (
                b'"delta":{"role":"assistant","content":%s},"logprobs":null,"finish_reason":%s}]}\n\n'
            )
        else:
            body = b'"text":%s,"logprobs":null,"finish_reason":%s,"stop_reason":null}]}\n\n'
            first_body = body
        mid.append(body % (text.encode(), b"null"))
        first.append(first_body % (text.encode(), b"null"))
        last.append(body % (text.encode(), b'"length"'))
    return mid, first, last


TABLES = {"chat": _table("chat"), "completion": _table("completion")}
DONE = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
)


def prompt_text(kind: str, body: dict) -> str:
    if kind == "completion":
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else "".join(map(str, prompt))
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|im_start|>{message.get('role', '')}\n{content}<|im_end|>\n")
    return "".join(parts)


def token_ids(text: str) -> list[int]:
    """The fake's tokenization: one id per 4-byte group, the same in every process."""
    data = text.encode()
    data += b"\0" * (-len(data) % CHARS_PER_TOKEN)
    return [v % 49152 for v in memoryview(data).cast("I")]


RENDER_PATHS = {
    b"/v1/chat/completions/render": "chat",
    b"/v1/completions/render": "completion",
    b"/tokenize": "tokenize",
}


def render(kind: str, raw: bytes) -> bytes:
    """vLLM's /tokenize and /v1/(chat/)completions/render, as vllm-router's cache_aware policy calls them."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if kind == "tokenize":
        ids = token_ids(prompt_text("chat" if "messages" in body else "completion", body))
        out = {"count": len(ids), "max_model_len": 32768, "tokens": ids, "token_strs": None}
        return json.dumps(out).encode()
    # vLLM's current shape (a GenerateRequest); vllm-router 0.1.x ignores the older [conversation, prompts]
    ids = token_ids(prompt_text(kind, body))
    out = {"request_id": os.urandom(8).hex(), "token_ids": ids, "model": body.get("model")}
    return json.dumps(out).encode()


class PrefixCache:
    """LRU of chained block hashes; `lookup` returns cached tokens and inserts the prompt's blocks."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self.capacity = capacity_blocks
        self.block_chars = block_tokens * CHARS_PER_TOKEN
        self.block_tokens = block_tokens
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def lookup(self, text: str) -> int:
        step = self.block_chars
        h = 0
        hit = True
        cached_blocks = 0
        blocks = self.blocks
        hashes = []
        for start in range(0, len(text) - step + 1, step):
            h = hash((h, text[start : start + step]))
            if hit and h in blocks:
                cached_blocks += 1
            else:
                hit = False
            hashes.append(h)
        for h in reversed(hashes):  # the head ends up the most recent
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return cached_blocks * self.block_tokens


class Engine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = args.model
        self.ttft = args.ttft_ms / 1000
        self.itl = args.itl_ms / 1000
        # prefill cost is modelled only with the prefix cache; otherwise TTFT is fixed
        self.per_token = args.per_token_ms / 1000 if args.prefix_cache else 0.0
        self.cache = PrefixCache(args.cache_blocks, args.block_tokens) if args.prefix_cache else None
        self.kv_capacity_tokens = args.kv_capacity_tokens
        self.running = 0
        self.kv_tokens = 0
        self.reset()
        self.models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": self.model,
                        "parent": None,
                        "max_model_len": 32768,
                    }
                ],
            }
        ).encode()
        tokenizer = args.tokenizer_dir or self.model
        self.model_info_body = json.dumps(
            {
                "model_path": tokenizer,
                "tokenizer_path": tokenizer,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "served_model_name": self.model,
                "max_context_length": 32768,
                "max_total_num_tokens": self.kv_capacity_tokens,
                "vocab_size": 49152,
                "supports_vision": False,
                "model_type": "llama",
                "eos_token_ids": [2],
            }
        ).encode()
        self.server_info_body = json.dumps(
            {
                "model_path": tokenizer,
                "tokenizer_path": tokenizer,
                "served_model_name": self.model,
                "host": args.host,
                "port": args.port,
                "tp_size": 1,
                "dp_size": 1,
                "max_total_num_tokens": self.kv_capacity_tokens,
                "version": "fake",
                "internal_states": [{"last_gen_throughput": 0.0}],
            }
        ).encode()

    def reset(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generation_tokens = 0
        self.started = time.time()
        self.paths: dict[str, int] = {}
        if self.cache is not None:
            self.cache.blocks.clear()

    def metrics(self) -> bytes:
        labels = f'{{engine="0",model_name="{self.model}"}}'
        kv = min(1.0, self.kv_tokens / self.kv_capacity_tokens)
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{labels} {float(self.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{labels} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{labels} {kv}",
            "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries counter",
            f"vllm:prefix_cache_queries_total{labels} {float(self.prompt_tokens)}",
            "# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.",
            "# TYPE vllm:prefix_cache_hits counter",
            f"vllm:prefix_cache_hits_total{labels} {float(self.cached_tokens)}",
            "# HELP vllm:prompt_tokens Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens counter",
            f"vllm:prompt_tokens_total{labels} {float(self.prompt_tokens)}",
            "# HELP vllm:generation_tokens Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens counter",
            f"vllm:generation_tokens_total{labels} {float(self.generation_tokens)}",
        ]
        if self.cache is not None:  # vLLM's info gauge: the prefix cache's size, as labels
            info = f'num_gpu_blocks="{self.cache.capacity}",block_size="{self.cache.block_tokens}"'
            lines += [
                "# HELP vllm:cache_config_info Information of the KV cache configuration.",
                "# TYPE vllm:cache_config_info gauge",
                f"vllm:cache_config_info{{{info}}} 1.0",
            ]
        return ("\n".join(lines) + "\n").encode()

    def stats(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "generation_tokens": self.generation_tokens,
                "running": self.running,
                "cache_blocks": len(self.cache.blocks) if self.cache is not None else None,
                "cpu_s": sum(os.times()[:2]),
                "paths": self.paths,
            }
        ).encode()


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json", close=False) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (status, content_type, len(body))
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


class Stream:
    """One request in flight: emits chunk `i` from a timer, then the next timer."""

    __slots__ = ("cached", "conn", "handle", "i", "include_usage", "kind", "kv", "n", "prefix", "prompt")

    def __init__(self, conn, kind, n, prefix, prompt, cached, include_usage, kv):
        self.conn = conn
        self.kind = kind
        self.n = n
        self.prefix = prefix
        self.prompt = prompt
        self.cached = cached
        self.include_usage = include_usage
        self.kv = kv
        self.i = 0
        self.handle = None


class Connection(asyncio.Protocol):
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.queue: deque[tuple[bytes, bytes, bytes, bool]] = deque()
        self.busy = False
        self.stream: Stream | None = None
        self.keep_alive = True

    # -- transport ------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.stream is not None:
            self._end_stream(self.stream)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_response(b"400 Bad Request", b'{"error":"bad request"}', close=True))
            self.transport.close()

    # -- parser callbacks -----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        self.queue.append(
            (self.parser.get_method(), path, b"".join(self.body), self.parser.should_keep_alive())
        )
        if not self.busy:
            self._next()

    # -- dispatch -------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _finish(self) -> None:
        self.busy = False
        if not self.keep_alive:
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self._next()

    def _next(self) -> None:
        method, path, body, keep_alive = self.queue.popleft()
        self.busy = True
        self.keep_alive = keep_alive
        engine = self.engine
        key = path.decode("latin-1")
        engine.paths[key] = engine.paths.get(key, 0) + 1
        if path in (b"/v1/chat/completions", b"/v1/completions") and method == b"POST":
            self._generate("chat" if path == b"/v1/chat/completions" else "completion", body)
            return
        if path in RENDER_PATHS and method == b"POST":
            self._write(_response(b"200 OK", render(RENDER_PATHS[path], body), close=not keep_alive))
            self._finish()
            return
        if path == b"/health" or path == b"/health_generate" or path == b"/ping":
            out = _response(b"200 OK", b"", close=not keep_alive)
        elif path == b"/v1/models":
            out = _response(b"200 OK", engine.models_body, close=not keep_alive)
        elif path == b"/metrics":
            out = _response(b"200 OK", engine.metrics(), b"text/plain; version=0.0.4", not keep_alive)
        elif path == b"/get_load":
            load = [{"dp_rank": 0, "num_reqs": engine.running, "num_waiting_reqs": 0}]
            load[0]["num_tokens"] = engine.kv_tokens
            out = _response(b"200 OK", json.dumps(load).encode(), close=not keep_alive)
        elif path in (b"/get_model_info", b"/model_info"):
            out = _response(b"200 OK", engine.model_info_body, close=not keep_alive)
        elif path in (b"/get_server_info", b"/server_info"):
            out = _response(b"200 OK", engine.server_info_body, close=not keep_alive)
        elif path == b"/stats":
            out = _response(b"200 OK", engine.stats(), close=not keep_alive)
        elif path == b"/reset" and method == b"POST":
            engine.reset()
            out = _response(b"200 OK", b"{}", close=not keep_alive)
        else:
            out = _response(b"404 Not Found", b'{"error":"not found"}', close=not keep_alive)
        self._write(out)
        self._finish()

    def _generate(self, kind: str, raw: bytes) -> None:
        engine = self.engine
        try:
            body = json.loads(raw)
            n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        except (ValueError, TypeError, AttributeError):
            self._write(_response(b"400 Bad Request", b'{"error":"bad json"}', close=not self.keep_alive))
            self._finish()
            return
        n = max(1, n)
        text = prompt_text(kind, body)
        prompt_tokens = max(1, len(text) // CHARS_PER_TOKEN)
        cached = min(engine.cache.lookup(text), prompt_tokens - 1) if engine.cache is not None else 0
        engine.requests += 1
        engine.prompt_tokens += prompt_tokens
        engine.cached_tokens += cached
        engine.running += 1
        kv = prompt_tokens + n
        engine.kv_tokens += kv
        ttft = engine.ttft + engine.per_token * (prompt_tokens - cached)
        created = int(time.time())
        rid = os.urandom(8).hex()
        if kind == "chat":
            prefix = (
                b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,"model":%s,'
                % (
                    rid.encode(),
                    created,
                    json.dumps(body.get("model") or engine.model).encode(),
                )
            )
        else:
            prefix = b'data: {"id":"cmpl-%s","object":"text_completion","created":%d,"model":%s,' % (
                rid.encode(),
                created,
                json.dumps(body.get("model") or engine.model).encode(),
            )
        prefix += b'"choices":[{"index":0,'
        options = body.get("stream_options") or {}
        stream = Stream(self, kind, n, prefix, prompt_tokens, cached, bool(options.get("include_usage")), kv)
        self.stream = stream
        if body.get("stream"):
            self._write(STREAM_HEAD + (b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n"))
            stream.handle = self.loop.call_later(ttft, self._emit, stream)
        else:
            stream.handle = self.loop.call_later(ttft + engine.itl * (n - 1), self._complete, stream)

    def _usage(self, stream: Stream) -> dict:
        return {
            "prompt_tokens": stream.prompt,
            "total_tokens": stream.prompt + stream.n,
            "completion_tokens": stream.n,
            "prompt_tokens_details": {"cached_tokens": stream.cached},
        }

    def _emit(self, stream: Stream) -> None:
        i = stream.i
        mid, first, last = TABLES[stream.kind]
        word = i % len(mid)
        if i == stream.n - 1:
            tail = last[word]
        elif i == 0:
            tail = first[word]
        else:
            tail = mid[word]
        data = stream.prefix + tail
        out = b"%x\r\n%s\r\n" % (len(data), data)
        stream.i = i + 1
        if stream.i < stream.n:
            self._write(out)
            stream.handle = self.loop.call_later(self.engine.itl, self._emit, stream)
            return
        if stream.include_usage:
            usage = json.dumps(self._usage(stream), separators=(",", ":")).encode()
            usage_chunk = (
                stream.prefix[: -len(b'"choices":[{"index":0,')] + b'"choices":[],"usage":%s}\n\n' % usage
            )
            out += _frame(usage_chunk)
        self._write(out + DONE)
        self._end_stream(stream)
        self._finish()

    def _complete(self, stream: Stream) -> None:
        mid, _, _ = TABLES[stream.kind]
        text = "".join(" " + _WORDS[i % len(mid)] for i in range(stream.n))
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            if stream.kind == "chat"
            else {"index": 0, "text": text, "finish_reason": "length"}
        )
        head = json.loads(stream.prefix[len(b"data: ") :] + b'"x":0}]}')
        body = {
            "id": head["id"],
            "object": "chat.completion" if stream.kind == "chat" else "text_completion",
            "created": head["created"],
            "model": head["model"],
            "choices": [choice],
            "usage": self._usage(stream),
        }
        stream.i = stream.n
        self._write(_response(b"200 OK", json.dumps(body).encode(), close=not self.keep_alive))
        self._end_stream(stream)
        self._finish()

    def _end_stream(self, stream: Stream) -> None:
        if self.stream is not stream:
            return
        self.stream = None
        if stream.handle is not None:
            stream.handle.cancel()
        engine = self.engine
        engine.running -= 1
        engine.kv_tokens -= stream.kv
        engine.generation_tokens += stream.i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--tokenizer-dir", help="reported as model_path/tokenizer_path (sglang-router)")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--prefix-cache", action="store_true")
    parser.add_argument("--cache-blocks", type=int, default=400)
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument(
        "--per-token-ms", type=float, default=0.1, help="with --prefix-cache: TTFT per uncached prompt token"
    )
    parser.add_argument("--kv-capacity-tokens", type=int, default=262144, help="for kv_cache_usage_perc")
    args = parser.parse_args()

    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine = Engine(args)
    server = loop.run_until_complete(
        loop.create_server(lambda: Connection(engine, loop), args.host, args.port, backlog=1024)
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(f"fake engine on http://{args.host}:{args.port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
