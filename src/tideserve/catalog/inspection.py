"""What a custom model is, read from its files: architecture, size, weight format and checksum.

Only headers are read (GGUF metadata through a memory map, safetensors JSON headers), so inspecting
a 70B checkpoint costs the time to hash it, not to load it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ModelFormat = Literal["gguf", "safetensors"]

_GGUF_MAGIC = b"GGUF"
# A safetensors header is a few MB even for sharded 100B+ checkpoints; a larger length means the
# file is not safetensors, and reading it would allocate whatever garbage the first bytes encode.
_MAX_SAFETENSORS_HEADER = 100 << 20
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# GGUF architecture names that differ from config.json's model_type.
_GGUF_MODEL_TYPES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "deepseek2": "deepseek_v3"}
# Named as the memory estimator names weight formats (tideserve.catalog.estimator.WEIGHT_FORMATS).
_SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "fp8",
    "F8_E5M2": "fp8",
    "I8": "int8",
}
_GGUF_FLOAT_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# AWQ/GPTQ tensors that describe packed weights rather than being weights themselves.
_QUANT_AUX_SUFFIXES = (".qzeros", ".scales", ".g_idx")


class ModelSourceError(ValueError):
    """A model source that cannot be fetched or read; the message names the path and the fix."""


@dataclass(frozen=True)
class ModelMetadata:
    format: ModelFormat
    architecture: str  # config.json model_type: llama, qwen2, qwen3, mistral, ...
    layers: int
    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    tie_word_embeddings: bool
    parameters: int
    dtype: str  # float weights: float16/bfloat16/...; GGUF: its quantization (q4_1, q4_k_m, ...)
    size_bytes: int
    sha256: str


def inspect_model(path: Path) -> ModelMetadata:
    """Read a `.gguf` file or a Hugging Face safetensors directory (or its config.json)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelSourceError(f"model path {path} does not exist")
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        return _inspect_hf_dir(path)
    if not _has_gguf_magic(path):
        raise ModelSourceError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes): give a .gguf file "
            "or a Hugging Face directory with config.json, tokenizer files and *.safetensors"
        )
    return _inspect_gguf(path)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_sha256(root: Path) -> str:
    """A directory's checksum: sha256 of "<file sha256>  <relative path>\\n" lines (sha256sum's format)
    sorted by path, so any copy of the same files in any place hashes the same."""
    manifest = "".join(f"{file_sha256(root / rel)}  {rel}\n" for rel in _model_files(root))
    return hashlib.sha256(manifest.encode()).hexdigest()


def _model_files(root: Path) -> list[str]:
    # Hidden entries are download bookkeeping (huggingface_hub's .cache/, .gitattributes) that
    # changes between copies of the same model, so they are not part of it.
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _has_gguf_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == _GGUF_MAGIC


# --- GGUF ---------------------------------------------------------------------------------------


def _inspect_gguf(path: Path) -> ModelMetadata:
    import gguf

    # Corrupt or truncated input fails inside the reader's numpy parsing with whichever of these it
    # hits first.
    try:
        reader = gguf.GGUFReader(str(path))  # memory-maps: tensor data stays on disk
    except (ValueError, IndexError, OSError) as e:
        raise ModelSourceError(f"{path} is not a readable GGUF file ({e}): download it again") from e
    arch = _gguf_field(reader, "general.architecture")
    if not arch or not reader.tensors:
        raise ModelSourceError(
            f"{path} has no general.architecture or no tensors: it is not a model GGUF (an adapter?)"
        )

    def required(key: str) -> Any:
        value = _gguf_field(reader, f"{arch}.{key}")
        if value is None:
            raise ModelSourceError(
                f"{path} has no {arch}.{key} in its metadata: re-convert it with llama.cpp"
            )
        return value

    heads = int(required("attention.head_count"))
    hidden = int(required("embedding_length"))
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _gguf_field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if not vocab:
        raise ModelSourceError(
            f"{path} has no tokenizer (tokenizer.ggml.tokens): re-convert it with llama.cpp"
        )
    return ModelMetadata(
        format="gguf",
        architecture=_GGUF_MODEL_TYPES.get(arch, arch),
        layers=int(required("block_count")),
        hidden_size=hidden,
        intermediate_size=int(required("feed_forward_length")),
        heads=heads,
        kv_heads=int(_gguf_field(reader, f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(_gguf_field(reader, f"{arch}.attention.key_length") or hidden // heads),
        vocab_size=int(vocab),
        max_context=int(required("context_length")),
        tie_word_embeddings="output.weight" not in names,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        dtype=_gguf_dtype(reader),
        size_bytes=path.stat().st_size,
        sha256=file_sha256(path),
    )


def _gguf_field(reader: Any, name: str) -> Any:
    field = reader.fields.get(name)
    return None if field is None else field.contents()


def _gguf_dtype(reader: Any) -> str:
    import gguf

    file_type = _gguf_field(reader, "general.file_type")
    try:
        name = gguf.LlamaFileType(file_type).name.lower()
    except ValueError:  # absent (None) or a type newer than the installed gguf package
        name = "guessed"
    if name == "guessed":
        # The type holding most weights is what the file is called by (the embedding and norms
        # usually keep a different one).
        counts = Counter[str]()
        for t in reader.tensors:
            counts[t.tensor_type.name.lower()] += int(t.n_elements)
        name = counts.most_common(1)[0][0]
    name = name.removeprefix("mostly_").removeprefix("all_")
    return _GGUF_FLOAT_TYPES.get(name, name)


# --- Hugging Face safetensors directory ---------------------------------------------------------


def _inspect_hf_dir(path: Path) -> ModelMetadata:
    cfg = _read_config(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelSourceError(
            f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}): copy them from the model's "
            "Hugging Face repository next to config.json"
        )
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        hint = " (*.bin: convert the checkpoint to safetensors)" if any(path.glob("*.bin")) else ""
        raise ModelSourceError(f"{path} has no *.safetensors weights{hint}")
    tensors: dict[str, dict[str, Any]] = {}
    for shard in shards:
        tensors.update(read_safetensors_header(shard))
    if not tensors:
        raise ModelSourceError(f"{path} has safetensors files without tensors: download the weights again")

    def required(key: str) -> int:
        if not isinstance(cfg.get(key), int):
            raise ModelSourceError(
                f"{path / 'config.json'} has no integer {key!r}: tideserve reads the standard "
                "Hugging Face config names; add the field"
            )
        return cfg[key]

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelSourceError(
            f"{path / 'config.json'} has no model_type: add it (llama, qwen2, mistral, ...)"
        )
    heads = required("num_attention_heads")
    hidden = required("hidden_size")
    tied = cfg.get("tie_word_embeddings")
    quant = cfg.get("quantization_config") or {}
    return ModelMetadata(
        format="safetensors",
        architecture=model_type,
        layers=required("num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=required("intermediate_size"),
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        vocab_size=required("vocab_size"),
        max_context=required("max_position_embeddings"),
        # Checkpoints that leave it out of config.json say it by having no separate LM head.
        tie_word_embeddings=bool(tied) if tied is not None else "lm_head.weight" not in tensors,
        parameters=_parameter_count(tensors, quant.get("bits")),
        dtype=quant.get("quant_method") or _main_dtype(tensors),
        size_bytes=sum((path / rel).stat().st_size for rel in _model_files(path)),
        sha256=tree_sha256(path),
    )


def _read_config(path: Path) -> dict[str, Any]:
    config = path / "config.json"
    if not config.is_file():
        raise ModelSourceError(
            f"{path} has no config.json: a Hugging Face model directory needs config.json, tokenizer "
            "files and *.safetensors (or register a .gguf file)"
        )
    try:
        cfg = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelSourceError(f"{config} is not valid JSON ({e}): download it again") from e
    if not isinstance(cfg, dict):
        raise ModelSourceError(f"{config} is not a JSON object: download it again")
    return cfg


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {dtype, shape, data_offsets}, from the JSON header only."""
    with path.open("rb") as f:
        prefix = f.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        if not 0 < length <= _MAX_SAFETENSORS_HEADER:
            raise ModelSourceError(f"{path} is not a safetensors file (bad header length): download it again")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelSourceError(f"{path} has a broken safetensors header ({e}): download it again") from e
    header.pop("__metadata__", None)
    return header


def _parameter_count(tensors: dict[str, dict[str, Any]], bits: int | None) -> int:
    total = 0
    for name, info in tensors.items():
        if bits and name.endswith(_QUANT_AUX_SUFFIXES):
            continue
        n = math.prod(info["shape"])
        # AWQ/GPTQ pack 32 // bits weights into each int32 of a qweight tensor.
        if bits and name.endswith(".qweight") and info["dtype"] == "I32":
            n *= 32 // bits
        total += n
    return total


def _main_dtype(tensors: dict[str, dict[str, Any]]) -> str:
    counts = Counter[str]()
    for info in tensors.values():
        counts[info["dtype"]] += math.prod(info["shape"])
    raw = counts.most_common(1)[0][0]
    return _SAFETENSORS_DTYPES.get(raw, raw.lower())
