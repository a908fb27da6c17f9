"""Sampling: greedy, temperature, top-k/top-p/min-p, seeds, penalties, min_tokens, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from tideserve.engine.sampler import Sampler, apply_penalties
from tideserve.engine.sequence import SamplingParams, Sequence

EOS = 3
STOP = 4


def make_seq(output: list[int] | None = None, prompt: list[int] | None = None, **params: object) -> Sequence:
    seq = Sequence(prompt or [0], SamplingParams(**params))  # type: ignore[arg-type]
    seq.output_token_ids = list(output or [])
    return seq


def random_logits(rows: int, vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    return Sampler((EOS,))(logits.clone(), seqs).token_ids


# probabilities 0.4 0.3 0.2 0.1
QUARTERS = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()


def drawn(params: dict[str, object], logits: torch.Tensor = QUARTERS, n: int = 4000) -> set[int]:
    """Which tokens `n` independent draws from one row's distribution produce."""
    torch.manual_seed(0)
    seq = make_seq(**params)
    return set(sample(logits.expand(n, -1), [seq] * n))


# --- greedy and truncation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 0.0, "top_k": 5, "top_p": 0.5, "min_p": 0.1},  # filters don't matter
        {"temperature": 0.0, "seed": 7},
    ],
)
def test_greedy_is_argmax(params: dict[str, object]) -> None:
    logits = random_logits(16, 50)
    seqs = [make_seq(**params) for _ in range(16)]
    assert sample(logits, seqs) == logits.argmax(dim=-1).tolist()


def test_greedy_rows_stay_argmax_beside_sampled_rows() -> None:
    logits = random_logits(16, 50, seed=1, scale=0.1)  # flat: sampled rows rarely pick the argmax
    seqs = [make_seq(temperature=0.0 if i % 2 else 1.0) for i in range(16)]
    torch.manual_seed(0)
    tokens = sample(logits, seqs)
    argmax = logits.argmax(dim=-1).tolist()
    assert tokens[1::2] == argmax[1::2]
    assert tokens[0::2] != argmax[0::2]


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 3.0, 100.0])
@pytest.mark.parametrize("params", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_truncation_to_one_token_equals_greedy(temperature: float, params: dict[str, object]) -> None:
    logits = random_logits(64, 50, seed=2)
    seqs = [make_seq(temperature=temperature, **params) for _ in range(64)]
    torch.manual_seed(0)
    assert sample(logits, seqs) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({}, {0, 1, 2, 3}),
        ({"top_k": 1}, {0}),
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 3}, {0, 1, 2}),
        ({"top_k": 10}, {0, 1, 2, 3}),  # more than the vocabulary
        ({"top_p": 0.3}, {0}),
        ({"top_p": 0.5}, {0, 1}),  # the smallest prefix with mass >= top_p
        ({"top_p": 0.75}, {0, 1, 2}),
        ({"top_p": 0.95}, {0, 1, 2, 3}),
        ({"top_k": 2, "top_p": 0.5}, {0}),  # top_p over the top-k renormalised: 0.57 0.43
        ({"min_p": 0.3}, {0, 1, 2}),  # keeps p >= 0.3 * 0.4
        ({"min_p": 0.6}, {0, 1}),
        ({"min_p": 0.8}, {0}),
        ({"min_p": 0.1}, {0, 1, 2, 3}),
        ({"temperature": 0.5, "min_p": 0.3}, {0, 1}),  # after temperature: 0.53 0.3 0.13 0.03
        ({"temperature": 0.5, "top_p": 0.8}, {0, 1}),
    ],
)
def test_filters_keep_exactly_the_allowed_tokens(params: dict[str, object], allowed: set[int]) -> None:
    assert drawn(params) == allowed


# --- the sampled distribution ---------------------------------------------------------------

LOGITS5 = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"temperature": 1.0}, [0, 1, 2, 3, 4]),
        ({"temperature": 0.5}, [0, 1, 2, 3, 4]),
        ({"temperature": 2.0}, [0, 1, 2, 3, 4]),
        ({"temperature": 1.0, "top_k": 3}, [0, 1, 2]),
        ({"temperature": 1.0, "top_p": 0.8}, [0, 1, 2]),  # mass before token 3 is 0.896
        ({"temperature": 1.0, "min_p": 0.2}, [0, 1, 2]),
    ],
)
def test_empirical_distribution_matches_softmax(params: dict[str, object], allowed: list[int]) -> None:
    n = 10_000
    temperature = float(params["temperature"])  # type: ignore[arg-type]
    probs = torch.softmax(LOGITS5.double() / temperature, dim=-1)
    expected = probs[allowed] / probs[allowed].sum() * n
    torch.manual_seed(1234)  # fixed draws: the test cannot flake
    seq = make_seq(**params)
    counts = torch.bincount(torch.tensor(sample(LOGITS5.expand(n, -1), [seq] * n)), minlength=5).double()
    assert set(counts.nonzero().flatten().tolist()) == set(allowed)
    chi2 = float(((counts[allowed] - expected) ** 2 / expected).sum())
    # df <= 4: 25 is far in the tail (p < 1e-4); a wrong temperature scores in the hundreds.
    assert chi2 < 25, (counts.tolist(), expected.tolist())


# --- seeds ----------------------------------------------------------------------------------

FLAT = random_logits(1, 100, seed=3, scale=0.5)[0]


def seeded_draws(seed: int, companions: list[dict[str, object]], position: int, steps: int = 20) -> list[int]:
    """`steps` tokens for a seeded row sampled with `companions` in the batch around it."""
    sampler = Sampler((EOS,))
    target = make_seq(seed=seed, temperature=0.9)
    others = [make_seq(**p) for p in companions]
    batch = [*others[:position], target, *others[position:]]
    logits = torch.stack(
        [FLAT if s is target else random_logits(1, 100, seed=i)[0] for i, s in enumerate(batch)]
    )
    out = []
    for step in range(steps):
        torch.manual_seed(1000 + step + len(companions))  # unrelated global RNG state
        out.append(sampler(logits.clone(), batch).token_ids[position])
    return out


@pytest.mark.parametrize(
    ("companions", "position"),
    [
        ([{"temperature": 0.0}], 1),
        ([{"temperature": 1.0}, {"temperature": 1.0}], 1),
        ([{"temperature": 1.0, "top_p": 0.5}, {"temperature": 0.7, "top_k": 5}, {"min_p": 0.1}], 2),
        ([{"temperature": 1.0, "seed": 5}, {"temperature": 1.0, "presence_penalty": 1.0}], 0),
    ],
)
def test_seed_is_independent_of_batch_composition(companions: list[dict[str, object]], position: int) -> None:
    alone = seeded_draws(42, [], 0)
    assert len(set(alone)) > 5  # a real draw, not a constant
    assert seeded_draws(42, companions, position) == alone


def test_different_seeds_differ() -> None:
    runs = [tuple(seeded_draws(seed, [], 0)) for seed in range(1, 6)]
    assert len(set(runs)) == len(runs)


def test_seeded_sequence_advances_its_generator() -> None:
    draws = seeded_draws(42, [], 0)
    assert draws[:10] != draws[10:]  # not the same draw each step


# --- penalties ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "prompt", "output", "logits", "expected"),
    [
        # presence: a flat amount once a token has been generated (prompt tokens don't count)
        ({"presence_penalty": 0.5}, [3], [1, 1, 2], [1, 1, 1, 1, 1], [1, 0.5, 0.5, 1, 1]),
        # frequency: per occurrence in the output
        ({"frequency_penalty": 0.5}, [3], [1, 1, 2], [1, 1, 1, 1, 1], [1, 0, 0.5, 1, 1]),
        (
            {"presence_penalty": 0.5, "frequency_penalty": 0.25},
            [3],
            [1, 1, 2],
            [1, 1, 1, 1, 1],
            [1, 0, 0.25, 1, 1],
        ),
        ({"presence_penalty": -1.0}, [3], [0], [1, 1, 1, 1, 1], [2, 1, 1, 1, 1]),  # negative: encourage
        # repetition: divide positive logits, multiply negative ones; prompt and output count
        ({"repetition_penalty": 2.0}, [0, 1], [2], [2, -2, 4, -1, 3], [1, -4, 2, -1, 3]),
        ({"repetition_penalty": 0.5}, [0, 1], [], [2, -2, 4, -1, 3], [4, -1, 4, -1, 3]),
        ({"repetition_penalty": 2.0}, [0], [0, 0], [4, 1, 1, 1, 1], [2, 1, 1, 1, 1]),  # once, not per count
        # repetition first, then frequency: 2 / 2 - 2 * 1.0
        (
            {"repetition_penalty": 2.0, "frequency_penalty": 1.0},
            [0],
            [1, 1],
            [2, 2, 2, 2, 2],
            [1, -1, 2, 2, 2],
        ),
        ({}, [0, 1], [1, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
    ],
)
def test_penalties_exact_values(
    params: dict[str, object],
    prompt: list[int],
    output: list[int],
    logits: list[float],
    expected: list[float],
) -> None:
    seq = make_seq(output, prompt, **params)
    raw = torch.tensor([logits], dtype=torch.float32)
    got = apply_penalties(raw, [seq])
    assert got[0].tolist() == pytest.approx(expected)
    assert raw[0].tolist() == logits  # the caller's tensor is untouched


def test_penalties_apply_per_row() -> None:
    seqs = [
        make_seq([1], [0], presence_penalty=1.0),
        make_seq([1], [0]),
        make_seq([2], [0], repetition_penalty=2.0),
    ]
    got = apply_penalties(torch.full((3, 4), 2.0), seqs)
    assert got.tolist() == [[2, 1, 2, 2], [2, 2, 2, 2], [1, 2, 1, 2]]


def test_greedy_sees_penalised_logits() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0, 0.0]])
    assert sample(logits, [make_seq([0], temperature=0.0)]) == [0]
    assert sample(logits, [make_seq([0], temperature=0.0, frequency_penalty=2.0)]) == [1]


# --- min_tokens -----------------------------------------------------------------------------

EOS_FAVOURED = torch.tensor([[0.0, 1.0, 0.0, 10.0, 9.0]])


@pytest.mark.parametrize(
    ("min_tokens", "num_output", "temperature", "ignore_eos", "expected"),
    [
        (0, 0, 0.0, False, {EOS}),
        (2, 0, 0.0, False, {1}),  # neither EOS nor the stop token: the best of the rest
        (2, 1, 0.0, False, {1}),
        (2, 2, 0.0, False, {EOS}),  # min_tokens reached
        (2, 5, 0.0, False, {EOS}),
        (3, 0, 1.0, False, {0, 1, 2}),
        (3, 0, 1.0, True, {0, 1, 2}),
        (1, 1, 1.0, False, {EOS, STOP, 0, 1, 2}),
    ],
)
def test_min_tokens_blocks_eos_and_stop_tokens(
    min_tokens: int, num_output: int, temperature: float, ignore_eos: bool, expected: set[int]
) -> None:
    n = 2000
    seq = make_seq(
        [5] * num_output,
        min_tokens=min_tokens,
        temperature=temperature,
        stop_token_ids=(STOP,),
        ignore_eos=ignore_eos,
    )
    torch.manual_seed(0)
    logits = EOS_FAVOURED if temperature == 0.0 else EOS_FAVOURED.expand(n, -1) / 5  # flatter
    rows = [seq] * logits.shape[0]
    assert set(sample(logits, rows)) == expected


def test_min_tokens_ignores_stop_token_ids_outside_the_vocabulary() -> None:
    seq = make_seq(min_tokens=2, temperature=0.0, stop_token_ids=(STOP, 10_000))
    assert sample(EOS_FAVOURED, [seq]) == [1]


# --- logprobs -------------------------------------------------------------------------------


def test_logprobs_of_raw_logits() -> None:
    logits = random_logits(5, 30, seed=4)
    seqs = [
        make_seq(logprobs=3),
        make_seq([1, 2], logprobs=5, temperature=1.5, top_k=10, frequency_penalty=1.0),
        make_seq(logprobs=0, temperature=0.0),
        make_seq(),  # not asked
        make_seq(logprobs=1, min_tokens=1),
    ]
    torch.manual_seed(0)
    result = Sampler((EOS,))(logits.clone(), seqs)
    reference = torch.log_softmax(logits.double(), dim=-1)
    assert result.logprobs[3] is None
    for row, (seq, token) in enumerate(zip(seqs, result.token_ids, strict=True)):
        lp = result.logprobs[row]
        if seq.params.logprobs is None:
            continue
        assert lp is not None
        chosen, top = lp
        assert chosen == pytest.approx(float(reference[row, token]), abs=1e-5)
        assert len(top) == seq.params.logprobs
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        ranked = reference[row].argsort(descending=True).tolist()
        assert [t for t, _ in top] == ranked[: len(top)]
        for t, v in top:
            assert v == pytest.approx(float(reference[row, t]), abs=1e-5)
            assert math.isfinite(v)
