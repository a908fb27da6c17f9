"""The engine loop: requests in, scheduled steps through the model, text and tokens out.

`EngineCore` is synchronous and single-threaded: `step()` schedules, runs the model once,
appends sampled tokens, detokenizes, applies stop conditions and reports what changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tideserve.engine.block_manager import BlockManager
from tideserve.engine.config import EngineConfig
from tideserve.engine.metrics import EngineMetrics
from tideserve.engine.runner import ModelRunner
from tideserve.engine.scheduler import Scheduler
from tideserve.engine.sequence import FinishReason, SamplingParams, Sequence
from tideserve.engine.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    text: str = ""  # generated text so far (stop string excluded once found)
    emitted: int = 0  # characters of `text` already reported
    last_token_time: float = 0.0


class EngineCore:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Tokenizer,
        config: EngineConfig,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.bm = BlockManager(runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.bm)
        self.metrics = metrics
        if metrics is not None:
            metrics.cache_config(runner.num_blocks, config.block_size)
        self.eos = set(tokenizer.eos_token_ids) | set(runner.cfg.eos_token_ids)
        self._requests: dict[str, _Request] = {}
        self._aborted: list[RequestOutput] = []

    @property
    def capacity_tokens(self) -> int:
        return self.runner.num_blocks * self.config.block_size

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
    ) -> None:
        if request_id in self._requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        limit = min(self.config.max_model_len, self.capacity_tokens)
        if len(prompt_token_ids) + params.max_tokens > limit:
            raise ValueError(
                f"{len(prompt_token_ids)} prompt tokens + max_tokens {params.max_tokens} > {limit}"
            )
        seq = Sequence(prompt_token_ids, params, priority=priority, request_id=request_id)
        self._requests[request_id] = _Request(seq, self.tokenizer.detokenizer())
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        self._release(req.seq)
        self._aborted.append(
            RequestOutput(
                request_id,
                [],
                "",
                True,
                FinishReason.ABORT,
                req.seq.num_prompt_tokens,
                req.seq.num_output_tokens,
            )
        )

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._aborted)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def _release(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.sampler.forget(seq)

    def step(self) -> list[RequestOutput]:
        outputs, self._aborted = self._aborted, []
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            self._observe(0)
            return outputs
        now = time.monotonic()
        for s in sched.scheduled:
            if s.seq.first_scheduled_time is None:
                s.seq.first_scheduled_time = now
                if self.metrics:
                    self.metrics.queue_time.observe(now - s.seq.arrival_time)
        result = self.runner.execute(sched.scheduled)
        self.scheduler.update(sched.scheduled)
        now = time.monotonic()
        for row, seq in enumerate(result.sampled):
            req = self._requests[seq.request_id]
            token = result.samples.token_ids[row]
            out = self._append(req, token, now)
            lp = result.samples.logprobs[row]
            if lp is not None:
                out.logprobs.append(TokenLogprob(token, lp[0], lp[1]))
            outputs.append(out)
        self._observe(len(result.sampled))
        return outputs

    def _append(self, req: _Request, token: int, now: float) -> RequestOutput:
        seq, p = req.seq, req.seq.params
        seq.output_token_ids.append(token)
        if self.metrics:
            if seq.first_token_time is None:
                self.metrics.ttft.observe(now - seq.arrival_time)
            else:
                self.metrics.itl.observe(now - req.last_token_time)
        if seq.first_token_time is None:
            seq.first_token_time = now
        req.last_token_time = now

        reason: FinishReason | None = None
        is_stop_token = (token in self.eos and not p.ignore_eos) or token in p.stop_token_ids
        if is_stop_token and seq.num_output_tokens >= p.min_tokens:
            reason = FinishReason.STOP  # the stop token's text is not part of the output
        else:
            req.text += req.detok.step(token)
            if p.stop:
                reason = self._check_stop_strings(req)
        if reason is None and (
            seq.num_output_tokens >= p.max_tokens or len(seq) >= self.config.max_model_len
        ):
            reason = FinishReason.LENGTH

        if reason is None:
            # Hold back a tail that could still turn out to be the start of a stop string.
            hold = max((len(s) - 1 for s in p.stop), default=0)
            upto = max(req.emitted, len(req.text) - hold)
        else:
            upto = len(req.text)
        new_text = req.text[req.emitted : upto]
        req.emitted = upto
        out = RequestOutput(
            seq.request_id,
            [token],
            new_text,
            reason is not None,
            reason,
            seq.num_prompt_tokens,
            seq.num_output_tokens,
            seq.num_cached_tokens,
        )
        if reason is not None:
            seq.finish_reason = reason
            self._requests.pop(seq.request_id, None)
            self._release(seq)
            if self.metrics:
                self.metrics.finished(seq, now)
        return out

    @staticmethod
    def _check_stop_strings(req: _Request) -> FinishReason | None:
        text = req.text
        longest = max(len(s) for s in req.seq.params.stop)
        window_start = max(0, req.emitted - longest)
        for s in req.seq.params.stop:
            i = text.find(s, window_start)
            if i != -1:
                req.text = text[:i]
                return FinishReason.STOP
        return None

    def _observe(self, generated: int) -> None:
        if not self.metrics:
            return
        m = self.metrics
        m.running.set(self.num_running)
        m.waiting.set(self.num_waiting)
        m.kv_usage.set(self.bm.usage)
        m.generation_tokens.inc(generated)
        m.sync_counters(self.scheduler)
