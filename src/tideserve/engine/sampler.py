"""Turn a batch of next-token logits into tokens, one row per sequence, vectorised over rows.

Each row has its own settings. Seeded rows draw from their own generator, advanced once per
token, so a seed gives the same output whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tideserve.engine.sequence import SamplingParams, Sequence


@dataclass
class SampleResult:
    token_ids: list[int]
    # Per row, when asked: (logprob of the chosen token, [(token, logprob)] top alternatives).
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...]) -> None:
        self.eos_token_ids = eos_token_ids
        self._generators: dict[int, torch.Generator] = {}

    def forget(self, seq: Sequence) -> None:
        self._generators.pop(seq.seq_id, None)

    def _generator(self, seq: Sequence, device: torch.device) -> torch.Generator:
        g = self._generators.get(seq.seq_id)
        if g is None:
            g = torch.Generator(device=device).manual_seed(seq.params.seed or 0)
            self._generators[seq.seq_id] = g
        return g

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
        """`logits`: [rows, vocab] float32, row i for seqs[i]."""
        params = [s.params for s in seqs]
        want_logprobs = [p.logprobs is not None for p in params]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None

        penalised = any(p.has_penalties for p in params)
        if penalised:
            logits = apply_penalties(logits, seqs)  # a copy
        vocab = logits.shape[-1]
        for i, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens:
                if not penalised:
                    logits, penalised = logits.clone(), True  # never write into the caller's tensor
                ids = [t for t in (*s.params.stop_token_ids, *self.eos_token_ids) if t < vocab]
                logits[i, ids] = -float("inf")

        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        tokens = logits.argmax(dim=-1)
        if not bool(greedy.all()):
            tokens = torch.where(greedy, tokens, self._sample(logits, seqs))

        token_list = tokens.tolist()
        lp: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(seqs)
        if raw_logprobs is not None:
            k = max(p.logprobs or 0 for p in params)
            chosen = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
            top_v, top_i = raw_logprobs.topk(max(k, 1), dim=-1)
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for i, p in enumerate(params):
                if p.logprobs is not None:
                    n = p.logprobs
                    lp[i] = (chosen[i], list(zip(top_i[i][:n], top_v[i][:n], strict=True)))
        return SampleResult(token_list, lp)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        dev = logits.device
        temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        logits = logits / temp.unsqueeze(1)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            logits = _top_k_top_p(logits, params, dev)
        probs = torch.softmax(logits, dim=-1)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=dev).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        # Gumbel-style draw: argmax(p / E) with E ~ Exp(1) samples from p without a sort.
        noise = torch.empty_like(probs).exponential_()
        for i, s in enumerate(seqs):
            if s.params.seed is not None:
                noise[i].exponential_(generator=self._generator(s, dev))
        return (probs / noise).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, params: list[SamplingParams], dev: torch.device) -> torch.Tensor:
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=dev)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=dev).unsqueeze(0)
    drop = ranks >= top_k.unsqueeze(1)
    probs = sorted_logits.masked_fill(drop, -float("inf")).softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """OpenAI presence/frequency penalties over generated tokens, and the multiplicative
    repetition penalty (CTRL paper, as in transformers and vLLM) over prompt and output."""
    rows, vocab = logits.shape
    dev = logits.device
    logits = logits.clone()
    counts = torch.zeros(rows, vocab, device=dev)
    seen = torch.zeros(rows, vocab, dtype=torch.bool, device=dev)
    for i, s in enumerate(seqs):
        if s.output_token_ids:
            out = torch.tensor(s.output_token_ids, device=dev)
            counts[i].scatter_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
        if s.params.repetition_penalty != 1.0:
            seen[i, torch.tensor(s.token_ids, device=dev)] = True
    rep = torch.tensor([s.params.repetition_penalty for s in seqs], device=dev).unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    freq = torch.tensor([s.params.frequency_penalty for s in seqs], device=dev).unsqueeze(1)
    pres = torch.tensor([s.params.presence_penalty for s in seqs], device=dev).unsqueeze(1)
    return logits - freq * counts - pres * (counts > 0).float()
