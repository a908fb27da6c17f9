"""GPU engine benchmark: tideserve's engine vs transformers' continuous batching, in one run.

Both run the same real architecture (bench/configs/*.json) with random weights in bfloat16, EOS
never stops a request, so lengths are exact. Offline (no HTTP): the engine loop is what is
measured. Reports single-stream decode tokens/s against the decode roofline (HBM bandwidth /
weight bytes per step) and output tokens/s for a batch of requests served with continuous batching.

    python bench/engine_gpu.py --config bench/configs/llama-3.1-8b.json --tokenizer DIR

DIR holds tokenizer.json (+ tokenizer_config.json) for detokenisation; any tokenizer whose ids fit
the vocabulary works, since the prompts are random token ids.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tideserve.engine.config import EngineConfig
from tideserve.engine.core import EngineCore
from tideserve.engine.loader import load
from tideserve.engine.runner import ModelRunner
from tideserve.engine.sequence import SamplingParams


def model_dir(config: Path, tokenizer: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="tideserve-bench-"))
    shutil.copy(config, d / "config.json")
    for f in tokenizer.glob("tokenizer*.json"):
        shutil.copy(f, d / f.name)
    return d


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 32000), (n, length), generator=g).tolist()


def hbm_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy rate (bytes read + written per second)."""
    x = torch.empty(2 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (start.elapsed_time(end) / 1000)


def run_ours(path: Path, reqs: list[list[int]], out_tokens: int, max_batch: int) -> dict[str, float]:
    device = torch.device("cuda")
    t0 = time.perf_counter()
    loaded = load(str(path), torch.bfloat16, device, 4096, load_format="dummy")
    cfg = EngineConfig(max_model_len=4096, max_batch_size=max_batch, max_num_batched_tokens=8192)
    core = EngineCore(ModelRunner(loaded.model, cfg, device), loaded.tokenizer, cfg)
    load_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=out_tokens, temperature=0.0, ignore_eos=True)

    def serve(batch: list[list[int]], tag: str) -> tuple[float, int]:
        for i, p in enumerate(batch):
            core.add_request(f"{tag}-{i}", p, params)
        n, start = 0, time.perf_counter()
        while core.has_work():
            n += sum(len(o.new_token_ids) for o in core.step())
        torch.cuda.synchronize()
        return time.perf_counter() - start, n

    serve(reqs[:2], "warm")
    # Single stream: decode rate after the first token.
    core.add_request("single", reqs[0], params)
    core.step()
    start, n = time.perf_counter(), 0
    while core.has_work():
        n += len(core.step())
    single = n / (time.perf_counter() - start)
    elapsed, tokens = serve(reqs, "batch")
    return {
        "load_s": load_s,
        "single_decode_tok_s": single,
        "batch_tok_s": tokens / elapsed,
        "batch_elapsed_s": elapsed,
        "kv_blocks": core.runner.num_blocks,
    }


def run_transformers(
    config: Path, reqs: list[list[int]], out_tokens: int, max_batch: int
) -> dict[str, float]:
    import transformers

    cfg = transformers.AutoConfig.for_model(**json.loads(config.read_text()))
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            cfg, dtype=torch.bfloat16, attn_implementation="paged|sdpa"
        ).eval()
    load_s = time.perf_counter() - t0
    gen = transformers.GenerationConfig(
        max_new_tokens=out_tokens,
        min_new_tokens=out_tokens,
        do_sample=False,
        eos_token_id=-1,
        pad_token_id=0,
        max_batch_tokens=8192,
    )
    model.generate_batch(inputs=reqs[:2], generation_config=gen, progress_bar=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate_batch(inputs=reqs[:1], generation_config=gen, progress_bar=False)
    torch.cuda.synchronize()
    single = out_tokens / (time.perf_counter() - start)  # includes its prefill: an upper bound on cost
    start = time.perf_counter()
    out = model.generate_batch(inputs=reqs, generation_config=gen, progress_bar=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = sum(len(r.generated_tokens) for r in out.values())
    return {
        "load_s": load_s,
        "single_decode_tok_s": single,
        "batch_tok_s": tokens / elapsed,
        "batch_elapsed_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--peers", default="tideserve,transformers")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    cfg = json.loads(args.config.read_text())
    reqs = prompts(args.requests, args.prompt_tokens, cfg["vocab_size"])
    dev = torch.device("cuda")
    bw = hbm_bandwidth(dev)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "config": args.config.name,
        "hbm_bytes_per_s": bw,
        **vars(args),
    }
    for peer in args.peers.split(","):
        try:
            if peer == "tideserve":
                r = run_ours(model_dir(args.config, args.tokenizer), reqs, args.output_tokens, args.max_batch)
            else:
                r = run_transformers(args.config, reqs, args.output_tokens, args.max_batch)
        except Exception as e:  # a peer that fails is reported, not fatal to the others
            r = {"error": f"{type(e).__name__}: {e}"}
        results[peer] = r
        torch.cuda.empty_cache()
        print(peer, json.dumps(r), flush=True)

    weight_bytes = _weight_bytes(cfg)
    roofline = bw / 2 / weight_bytes  # copy rate counts read + write; a decode step only reads
    results["decode_roofline_tok_s"] = roofline
    print(
        f"\n{args.config.name} on {results['device']}: HBM {bw / 1e12:.2f} TB/s (r+w), "
        f"weights {weight_bytes / 1e9:.1f} GB, batch-1 decode roofline {roofline:.0f} tok/s"
    )
    print(f"{'peer':<14}{'single tok/s':>14}{'% roofline':>12}{'batch tok/s':>14}{'load s':>9}")
    for peer in args.peers.split(","):
        r = results[peer]
        if "error" in r:  # type: ignore[operator]
            print(f"{peer:<14} error: {r['error']}")  # type: ignore[index]
            continue
        s = r["single_decode_tok_s"]  # type: ignore[index]
        print(f"{peer:<14}{s:>14.1f}{100 * s / roofline:>11.0f}%{r['batch_tok_s']:>14.0f}{r['load_s']:>9.1f}")  # type: ignore[index]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


def _weight_bytes(cfg: dict) -> int:
    from tideserve.engine.config import ModelConfig

    return ModelConfig.from_hf(cfg).num_params * 2


if __name__ == "__main__":
    main()
