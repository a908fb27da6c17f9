"""`python -m tideserve.engine --model PATH_OR_NAME --port N`: one engine instance."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tideserve.engine.core import EngineCore

DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tideserve.engine", description=__doc__)
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="bundled model name, a .gguf file, or a Hugging Face directory",
    )
    p.add_argument("--served-model-name", default=None, help="name clients put in 'model' (default: derived)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=60000)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16")
    p.add_argument(
        "--int4-decode",
        default="auto",
        choices=("auto", "on", "off"),
        help="4-bit weight copies for small-batch decode (CPU, bfloat16); auto: on there",
    )
    p.add_argument(
        "--load-format",
        default="auto",
        choices=("auto", "safetensors", "dummy"),
        help="dummy: random weights for the model's config (benchmarks of real architectures)",
    )
    p.add_argument("--max-model-len", type=int, default=None, help="default: the model's, capped at 8192")
    p.add_argument("--max-batch-size", "--max-num-seqs", dest="max_batch_size", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--kv-cache-memory",
        type=float,
        default=None,
        help="GiB for the KV cache (CPU default: two full-length contexts, at most 1/4 of RAM)",
    )
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed for dummy weights")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from tideserve.engine.server import build_app

    name = args.served_model_name or Path(args.model.rstrip("/")).name.removesuffix(".gguf").lower()
    app = build_app(name, lambda: build_engine(args, name))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    except OSError as e:  # port taken: say so plainly, exit non-zero
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        sys.exit(1)


def build_engine(args: argparse.Namespace, name: str) -> EngineCore:
    import torch

    from tideserve.engine.config import EngineConfig
    from tideserve.engine.core import EngineCore
    from tideserve.engine.loader import load
    from tideserve.engine.metrics import EngineMetrics
    from tideserve.engine.runner import ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = torch.bfloat16 if args.dtype == "auto" else getattr(torch, args.dtype)
    int4 = args.int4_decode == "on" or (
        args.int4_decode == "auto" and device.type == "cpu" and dtype == torch.bfloat16
    )
    from tideserve.engine.loader import read_config, resolve

    cfg = read_config(resolve(args.model))
    max_len = args.max_model_len or min(cfg.max_position_embeddings, 8192)
    engine_cfg = EngineConfig(
        max_model_len=max_len,
        max_batch_size=args.max_batch_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_gib=args.kv_cache_memory,
        enable_prefix_caching=args.prefix_caching,
    )
    loaded = load(args.model, dtype, device, max_len, args.load_format, args.seed, int4_decode=int4)
    runner = ModelRunner(loaded.model, engine_cfg, device)
    return EngineCore(runner, loaded.tokenizer, engine_cfg, EngineMetrics(name))


if __name__ == "__main__":
    main()
