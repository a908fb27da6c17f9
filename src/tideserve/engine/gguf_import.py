"""Turn a GGUF file into a Hugging Face model directory (config.json, safetensors, tokenizer).

Parsing GGUF metadata and dequantizing every tensor takes seconds in Python, so it is done once
and the result cached; every later start loads safetensors by mmap. Weights are dequantized to
float32, which holds GGUF's block formats (fp16 scale x small integer + fp16 offset) exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.").
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def cache_root() -> Path:
    base = os.environ.get("TIDESERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tideserve"
    )
    return Path(base) / "models"


def cached_dir_for(gguf_path: Path) -> Path:
    st = gguf_path.stat()
    # Size and mtime identify the file well enough for a cache and cost nothing to read;
    # hashing 100 MB+ would cost the very seconds the cache saves.
    key = f"{gguf_path.stem}-{st.st_size:x}-{int(st.st_mtime):x}"
    return cache_root() / key


def import_gguf(gguf_path: Path) -> Path:
    """Return a Hugging Face directory for `gguf_path`, converting it on first use."""
    target = cached_dir_for(gguf_path)
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".importing-"))
    try:
        _convert(gguf_path, tmp)
        try:
            tmp.rename(target)  # atomic: concurrent importers race harmlessly
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _field(reader: Any, name: str, default: Any = None) -> Any:
    f = reader.fields.get(name)
    return default if f is None else f.contents()


def hf_config_from_gguf(reader: Any) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    a = arch
    heads = _field(reader, f"{a}.attention.head_count")
    hidden = _field(reader, f"{a}.embedding_length")
    names = {t.name for t in reader.tensors}
    cfg: dict[str, Any] = {
        "model_type": GGUF_ARCHITECTURES[arch],
        "architectures": [_HF_CLASSES[arch]],
        "hidden_size": hidden,
        "intermediate_size": _field(reader, f"{a}.feed_forward_length"),
        "num_hidden_layers": _field(reader, f"{a}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _field(reader, f"{a}.attention.head_count_kv", heads),
        "head_dim": _field(reader, f"{a}.attention.key_length", hidden // heads),
        "max_position_embeddings": _field(reader, f"{a}.context_length", 4096),
        "rms_norm_eps": _field(reader, f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _field(reader, f"{a}.rope.freq_base", 10000.0),
        "vocab_size": _field(reader, f"{a}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    scaling = _field(reader, f"{a}.rope.scaling.type")
    if scaling == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": _field(reader, f"{a}.rope.scaling.factor")}
    elif "rope_freqs.weight" in names:
        raise ValueError(
            "this GGUF stores precomputed llama3 RoPE frequencies (rope_freqs.weight); "
            "serve the Hugging Face directory of this model instead"
        )
    return cfg


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two rotary halves of each head of Q and K; undo it so
    # the weights match Hugging Face's rotate-half layout.
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _convert(gguf_path: Path, out: Path) -> None:
    import gguf
    import torch
    from safetensors.torch import save_file

    from tideserve.engine.gguf_tokenizer import tokenizer_from_gguf

    reader = gguf.GGUFReader(str(gguf_path))
    cfg = hf_config_from_gguf(reader)
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        m = _BLOCK.fullmatch(t.name)
        if m:
            suffix = _LAYER_TENSORS.get(m.group(2))
            name = f"model.layers.{m.group(1)}.{suffix}" if suffix else None
        else:
            name = _GLOBAL_TENSORS.get(t.name)
        if name is None:
            raise ValueError(f"unexpected tensor {t.name!r} in {gguf_path.name}")
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # GGUF lists dimensions fastest-first; numpy data is already [rows, cols] = [out, in].
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if cfg["model_type"] == "llama":
            if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
                w = _unpermute(w, cfg["num_attention_heads"])
            elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
                w = _unpermute(w, cfg["num_key_value_heads"])
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "source": gguf_path.name})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))

    tokenizer, tok_config = tokenizer_from_gguf(reader)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    (out / "source.json").write_text(
        json.dumps({"gguf": str(gguf_path), "file_type": _field(reader, "general.file_type")})
    )
