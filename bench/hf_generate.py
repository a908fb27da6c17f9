"""Hugging Face transformers `generate` on the GGUF, measured in-process (run by engine_cpu.py).

Run as its own process, in the peer virtualenv engine_cpu.py makes (transformers needs accelerate for GGUF;
peers never go into the project's environment), with HF_HUB_OFFLINE=1, so its load time and RSS are its
own. Prints one JSON object on stdout.
The GGUF is dequantized to float32. Lengths are forced with min_new_tokens (the raw prompt's greedy
continuation would otherwise stop at once on <|im_end|>).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prompts import make_prompt


class StepClock(LogitsProcessor):
    """Records when each generation step's logits are ready, i.e. when each new token is produced."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def timed_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], new_tokens: int
) -> dict[str, float]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    clock = StepClock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=[clock],
            pad_token_id=tokenizer.pad_token_id,
        )
    elapsed = time.perf_counter() - start
    generated = out.shape[1] - batch["input_ids"].shape[1]
    steps = len(clock.times)
    return {
        "batch": len(prompts),
        "prompt_tokens_mean": float(batch["attention_mask"].sum(dim=1).float().mean()),
        "output_tokens": generated * len(prompts),
        "elapsed_s": elapsed,
        "tok_s": generated * len(prompts) / elapsed,
        "ttft_s": clock.times[0] - start,
        "decode_tok_s": (steps - 1) / (clock.times[-1] - clock.times[0]) if steps > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    directory, name = os.path.split(os.path.abspath(args.model))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    loaded_at = time.time()
    print(f"loaded in-process; {torch.get_num_threads()} torch threads", file=sys.stderr, flush=True)

    warmup = [make_prompt(f"{args.seed}/warmup/{i}") for i in range(2)]
    timed_generate(model, tokenizer, warmup, 4)
    single = timed_generate(model, tokenizer, [make_prompt(f"{args.seed}/single/0")], args.decode_tokens)
    levels = {}
    for n in (int(c) for c in args.concurrency.split(",")):
        prompts = [make_prompt(f"{args.seed}/streams{n}/{i}") for i in range(n)]
        levels[str(n)] = timed_generate(model, tokenizer, prompts, args.output_tokens)
        print(f"batch {n}: {levels[str(n)]['tok_s']:.1f} tok/s", file=sys.stderr, flush=True)

    result = {
        "loaded_at": loaded_at,
        "single": single,
        "levels": levels,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
