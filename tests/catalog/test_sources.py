"""Custom model sources against real files and a real S3-compatible server (moto's, as a process)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from tideserve.catalog.sources import (
    HfSource,
    LocalSource,
    ModelMetadata,
    ModelSourceError,
    S3Options,
    S3Source,
    inspect_model,
    materialize,
    parse_source,
)
from tideserve.engine.loader import bundled_gguf_path

BUCKET = "models"
TINY = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_llama_tensors(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()}


def write_tokenizer(path: Path) -> None:
    vocab = {"[UNK]": 0} | {f"t{n}": n for n in range(1, TINY["vocab_size"])}
    Tokenizer(WordLevel(vocab, unk_token="[UNK]")).save(str(path))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-shard Hugging Face directory of a tiny llama, plus a nested file and a hidden one."""
    root = tmp_path_factory.mktemp("tiny-llama")
    (root / "config.json").write_text(json.dumps(TINY))
    write_tokenizer(root / "tokenizer.json")
    tensors = tiny_llama_tensors(TINY)
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(root / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(root / "model-00002-of-00002.safetensors"))
    (root / "original").mkdir()
    (root / "original" / "params.json").write_text('{"dim": 64}')
    return root


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3_options(s3_endpoint: str) -> S3Options:
    return S3Options(
        endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing", region="us-east-1"
    )


@pytest.fixture(scope="module")
def bucket(s3_options: S3Options, hf_dir: Path) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=s3_options.endpoint_url,
        aws_access_key_id=s3_options.access_key_id,
        aws_secret_access_key=s3_options.secret_access_key,
        region_name=s3_options.region,
    )
    client.create_bucket(Bucket=BUCKET)
    for f in hf_dir.rglob("*"):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"hf/tiny-llama/{f.relative_to(hf_dir).as_posix()}")
    # A sibling whose name extends the prefix: it must not be swept into tiny-llama's download.
    client.put_object(Bucket=BUCKET, Key="hf/tiny-llama-2/config.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key="hf/tiny-llama/", Body=b"")  # a folder marker
    gguf_file = bundled_gguf_path()
    client.upload_file(str(gguf_file), BUCKET, f"gguf/{gguf_file.name}")
    return BUCKET


@pytest.fixture(scope="module")
def bundled_meta() -> ModelMetadata:
    return inspect_model(bundled_gguf_path())


def leftovers(dest_root: Path) -> list[Path]:
    return list(dest_root.iterdir()) if dest_root.exists() else []


# --- inspect_model ------------------------------------------------------------------------------


def test_inspect_bundled_gguf(bundled_meta: ModelMetadata) -> None:
    path = bundled_gguf_path()
    meta = bundled_meta
    assert (meta.format, meta.architecture, meta.dtype) == ("gguf", "llama", "q4_1")
    assert (meta.layers, meta.hidden_size, meta.intermediate_size) == (30, 576, 1536)
    assert (meta.heads, meta.kv_heads, meta.head_dim) == (9, 3, 64)
    assert (meta.vocab_size, meta.max_context, meta.tie_word_embeddings) == (49152, 8192, True)
    assert meta.parameters == 134_515_008  # ~135M, as on the plaza card
    assert meta.size_bytes == path.stat().st_size
    assert meta.sha256 == sha256_of(path)


def test_inspect_hf_directory(hf_dir: Path) -> None:
    meta = inspect_model(hf_dir)
    assert (meta.format, meta.architecture, meta.dtype) == ("safetensors", "llama", "float16")
    assert (meta.layers, meta.hidden_size, meta.intermediate_size) == (2, 64, 128)
    assert (meta.heads, meta.kv_heads, meta.head_dim) == (4, 2, 16)
    assert (meta.vocab_size, meta.max_context, meta.tie_word_embeddings) == (256, 512, False)
    assert meta.parameters == sum(t.size for t in tiny_llama_tensors(TINY).values())
    files = sorted(p for p in hf_dir.rglob("*") if p.is_file())
    assert meta.size_bytes == sum(p.stat().st_size for p in files)
    manifest = "".join(f"{sha256_of(p)}  {p.relative_to(hf_dir).as_posix()}\n" for p in files)
    assert meta.sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert inspect_model(hf_dir / "config.json") == meta


def test_hidden_files_do_not_change_a_directory_checksum(hf_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(hf_dir, copy)
    (copy / ".cache" / "huggingface").mkdir(parents=True)
    (copy / ".cache" / "huggingface" / "download.lock").write_text("x")
    (copy / ".gitattributes").write_text("*.safetensors filter=lfs")
    assert inspect_model(copy) == inspect_model(hf_dir)


def test_tied_embeddings_are_read_from_the_weights_when_config_omits_them(tmp_path: Path) -> None:
    cfg = {k: v for k, v in TINY.items() if k != "tie_word_embeddings"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(tmp_path / "tokenizer.json")
    tensors = tiny_llama_tensors(cfg)
    del tensors["lm_head.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert inspect_model(tmp_path).tie_word_embeddings is True


def test_awq_checkpoint_counts_packed_weights(tmp_path: Path) -> None:
    cfg = TINY | {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(tmp_path / "tokenizer.json")
    h, i = TINY["hidden_size"], TINY["intermediate_size"]
    save_file(
        {
            "model.embed_tokens.weight": np.zeros((256, h), np.float16),
            # 4-bit AWQ: [in, out / 8] int32 codes, plus per-group zeros and scales.
            "model.layers.0.mlp.up_proj.qweight": np.zeros((h, i // 8), np.int32),
            "model.layers.0.mlp.up_proj.qzeros": np.zeros((h // 32, i // 8), np.int32),
            "model.layers.0.mlp.up_proj.scales": np.zeros((h // 32, i), np.float16),
        },
        str(tmp_path / "model.safetensors"),
    )
    meta = inspect_model(tmp_path)
    assert meta.dtype == "awq"
    assert meta.parameters == 256 * h + h * i


def test_inspect_a_gguf_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "tiny-qwen3.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_block_count(1)
    writer.add_context_length(2048)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    writer.add_key_length(16)
    writer.add_token_list([f"t{n}".encode() for n in range(100)])
    for name, shape in {
        "token_embd.weight": (100, 32),
        "blk.0.attn_q.weight": (64, 32),
        "blk.0.ffn_up.weight": (64, 32),
        "output_norm.weight": (32,),
    }.items():
        writer.add_tensor(name, np.zeros(shape, np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    meta = inspect_model(path)
    assert (meta.architecture, meta.dtype, meta.head_dim, meta.kv_heads) == ("qwen3", "float16", 16, 1)
    assert (meta.vocab_size, meta.max_context, meta.tie_word_embeddings) == (100, 2048, True)
    assert meta.parameters == 100 * 32 + 2 * 64 * 32 + 32


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("not a model")
    with pytest.raises(ModelSourceError, match=r"model\.gguf is not a GGUF file"):
        inspect_model(path)


def test_a_truncated_gguf(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with bundled_gguf_path().open("rb") as f:
        path.write_bytes(f.read(1 << 20))
    with pytest.raises(ModelSourceError, match=r"cut\.gguf is not a readable GGUF file"):
        inspect_model(path)


def test_a_directory_without_config(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        inspect_model(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer files"),
        (lambda d: [p.unlink() for p in d.glob("*.safetensors")], r"has no \*\.safetensors"),
        (lambda d: (d / "config.json").write_text("{"), "is not valid JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps(TINY | {"hidden_size": None})), "'hidden_size'"),
        (lambda d: (d / "config.json").write_text(json.dumps(TINY | {"model_type": ""})), "no model_type"),
        (lambda d: (d / "model-00001-of-00002.safetensors").write_bytes(b"\xff" * 16), "not a safetensors"),
    ],
    ids=["no-tokenizer", "no-weights", "broken-config", "missing-field", "no-model-type", "broken-shard"],
)
def test_broken_directories(hf_dir: Path, tmp_path: Path, change: Any, message: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(hf_dir, copy)
    change(copy)
    with pytest.raises(ModelSourceError, match=message):
        inspect_model(copy)


# --- parse_source / local paths -----------------------------------------------------------------


def test_parse_source() -> None:
    assert parse_source("/models/x") == LocalSource(Path("/models/x"))
    assert parse_source("s3://bucket/a/b") == S3Source("bucket", "a/b")
    assert parse_source("s3://bucket/a/b/") == S3Source("bucket", "a/b")
    assert parse_source("s3://bucket") == S3Source("bucket", "")
    assert parse_source("hf://Qwen/Qwen3-8B") == HfSource("Qwen/Qwen3-8B")
    assert parse_source("hf://Qwen/Qwen3-8B@refs/pr/1") == HfSource("Qwen/Qwen3-8B", "refs/pr/1")


@pytest.mark.parametrize("bad", ["", "s3://", "s3:///key", "hf://gpt2", "hf://a/b/c", "gs://bucket/x"])
def test_parse_source_rejects(bad: str) -> None:
    with pytest.raises(ModelSourceError):
        parse_source(bad)


def test_local_paths_are_used_in_place(hf_dir: Path, tmp_path: Path) -> None:
    assert materialize(str(hf_dir), tmp_path / "store") == hf_dir.resolve()
    assert materialize(str(bundled_gguf_path()), tmp_path / "store") == bundled_gguf_path().resolve()
    assert leftovers(tmp_path / "store") == []


def test_a_local_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelSourceError, match=re.escape(f"local model path {missing} does not exist")):
        materialize(str(missing), tmp_path / "store")


# --- s3:// --------------------------------------------------------------------------------------


def test_s3_directory_round_trip(bucket: str, s3_options: S3Options, hf_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = materialize(f"s3://{bucket}/hf/tiny-llama", store, s3_options)
    assert path.parent == store and path.is_dir()
    assert (path / "original" / "params.json").read_text() == '{"dim": 64}'
    assert inspect_model(path) == inspect_model(hf_dir)  # same figures, size and sha256
    assert sorted(p.name for p in store.iterdir()) == [path.name]  # no temporary directory left

    # Fetched once: the second call finds the complete copy.
    mtime = (path / "config.json").stat().st_mtime_ns
    assert materialize(f"s3://{bucket}/hf/tiny-llama/", store, s3_options) == path
    assert (path / "config.json").stat().st_mtime_ns == mtime


def test_s3_single_gguf(
    bucket: str, s3_options: S3Options, bundled_meta: ModelMetadata, tmp_path: Path
) -> None:
    original = bundled_gguf_path()
    path = materialize(f"s3://{bucket}/gguf/{original.name}", tmp_path / "store", s3_options)
    assert path.name == original.name and path.parent.parent == tmp_path / "store"
    assert inspect_model(path) == bundled_meta


def test_s3_missing_bucket(s3_options: S3Options, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="bucket 'no-such-bucket' does not exist"):
        materialize("s3://no-such-bucket/x", tmp_path / "store", s3_options)
    assert leftovers(tmp_path / "store") == []


@pytest.mark.parametrize("key", ["hf/nothing-here", "gguf/missing.gguf"])
def test_s3_no_objects(bucket: str, s3_options: S3Options, tmp_path: Path, key: str) -> None:
    with pytest.raises(ModelSourceError, match=f"no object.* {re.escape(f's3://{bucket}/{key}')}"):
        materialize(f"s3://{bucket}/{key}", tmp_path / "store", s3_options)
    assert leftovers(tmp_path / "store") == []


def test_s3_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = S3Options(endpoint_url=endpoint, access_key_id="k", secret_access_key="s", region="us-east-1")
    start = time.monotonic()
    with pytest.raises(ModelSourceError, match=re.escape(f"cannot reach the S3 endpoint {endpoint}")):
        materialize("s3://models/x", tmp_path / "store", options)
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path / "store") == []


def test_s3_credentials_from_the_environment(
    bucket: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_from_aws_config(tmp_path, monkeypatch)
    options = S3Options(endpoint_url=s3_endpoint)
    with pytest.raises(ModelSourceError, match=r"no S3 credentials to read .* set AWS_ACCESS_KEY_ID"):
        materialize(f"s3://{bucket}/hf/tiny-llama", tmp_path / "store", options)
    assert leftovers(tmp_path / "store") == []

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    path = materialize(f"s3://{bucket}/hf/tiny-llama", tmp_path / "store", options)
    assert (path / "config.json").is_file()


def isolate_from_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # else boto3 asks the instance metadata service


def test_s3_invalid_endpoint(tmp_path: Path) -> None:
    options = S3Options(endpoint_url="minio:9000", access_key_id="k", secret_access_key="s")
    with pytest.raises(ModelSourceError, match="invalid S3 endpoint URL 'minio:9000'"):
        materialize("s3://models/x", tmp_path / "store", options)


# --- hf:// --------------------------------------------------------------------------------------


def assert_hf_fails_fast(tmp_path: Path, reason: str) -> None:
    start = time.monotonic()
    with pytest.raises(
        ModelSourceError, match=r"need the huggingface_hub package and network access to huggingface\.co"
    ) as e:
        materialize("hf://HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "store")
    assert time.monotonic() - start < 5
    assert reason in str(e.value) and "register DIR as a local path" in str(e.value)
    assert leftovers(tmp_path / "store") == []


def test_hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_hf_fails_fast(tmp_path, "HF_HUB_OFFLINE is set")


def test_hf_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert_hf_fails_fast(tmp_path, f"{endpoint} is unreachable")


def test_hf_without_the_hub_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    assert_hf_fails_fast(tmp_path, "huggingface_hub package is not installed")
