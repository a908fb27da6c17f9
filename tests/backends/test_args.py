"""The vLLM and SGLang adapters' command lines over a matrix of specs: each one parses with the flags
of the engine release the adapter targets (fixtures dumped from the real parsers), and the framework
parameters land on the engine's flags with the right values."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tideserve import __version__
from tideserve.backends import ADAPTERS, adapter_for
from tideserve.backends.base import EngineAdapter, LaunchContext, Role, Topology
from tideserve.backends.builtin import BUILTIN
from tideserve.backends.builtin import METRIC_NAMES as BUILTIN_NAMES
from tideserve.backends.sglang import SGLANG
from tideserve.backends.vllm import VLLM
from tideserve.services import spec as specs

from .flags import EngineFlags, load, parse

VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}
# What the kubelet substitutes for the LeaderWorkerSet variables before the engine sees them.
POD_ENV = {"$(LWS_WORKER_INDEX)": "1", "$(LWS_LEADER_ADDRESS)": "chat-0.chat.ns"}


def spec_of(engine: str, **spec: Any) -> dict[str, Any]:
    """A spec body as the platforms hand it to adapters: parsed, defaults applied, camelCase."""
    body = {"model": "qwen3-8b", "engine": {"name": engine}, **spec}
    parsed = specs.parse_service_document({"metadata": {"name": "chat"}, "spec": body})
    return specs.to_document(specs.apply_defaults(parsed, 32768))["spec"]


GPU = {"resources": {"cpu": 8, "memory": "64Gi", "gpus": 1}}
CASES: dict[str, dict[str, Any]] = {
    "defaults": {"spec": GPU},
    "tp4": {"spec": {"resources": {"cpu": 8, "memory": "64Gi", "gpus": 4}, "parameters": {"tpSize": 4}}},
    # resources.gpus counts every GPU of the instance: tpSize × ppSize × dpSize
    "dp2": {"spec": {"resources": {"cpu": 8, "memory": "64Gi", "gpus": 2}, "parameters": {"dpSize": 2}}},
    "max-model-len": {
        "spec": {
            **GPU,
            "parameters": {
                "maxModelLen": 16384,
                "maxBatchSize": 64,
                "gpuMemoryUtilization": 0.85,
                "maxNumBatchedTokens": 4096,
            },
        }
    },
    "pd-prefill": {"spec": {**GPU, "deployment": {"mode": "pdDisaggregated"}}, "role": "prefill"},
    "pd-decode": {"spec": {**GPU, "deployment": {"mode": "pdDisaggregated"}}, "role": "decode"},
    "multinode-leader": {
        "spec": {
            "resources": {"cpu": 32, "memory": "512Gi", "gpus": 16},
            "parameters": {"tpSize": 8, "ppSize": 2},
            "deployment": {"mode": "multiNode", "nodesPerInstance": 2},
        },
        "topology": Topology(2, 0, "$(LWS_LEADER_ADDRESS)", 29500),
    },
    "multinode-worker": {
        "spec": {
            "resources": {"cpu": 32, "memory": "512Gi", "gpus": 16},
            "parameters": {"tpSize": 8, "ppSize": 2},
            "deployment": {"mode": "multiNode", "nodesPerInstance": 2},
        },
        "topology": Topology(2, "$(LWS_WORKER_INDEX)", "$(LWS_LEADER_ADDRESS)", 29500),
    },
}

# case -> engine -> (flag, value) pairs that must appear; value None: a flag without a value
EXPECTED: dict[str, dict[str, list[tuple[str, str | None]]]] = {
    "defaults": {
        "vllm": [
            ("--served-model-name", "chat"),
            ("--port", "60000"),
            ("--tensor-parallel-size", "1"),
            ("--pipeline-parallel-size", "1"),
            ("--data-parallel-size", "1"),
            ("--max-num-seqs", "32"),
            ("--gpu-memory-utilization", "0.9"),
            ("--max-model-len", "32768"),
            ("--enable-prefix-caching", None),
            ("--scheduling-policy", "priority"),
        ],
        "sglang": [
            ("--model-path", "Qwen/Qwen3-8B"),
            ("--served-model-name", "chat"),
            ("--port", "60000"),
            ("--tp-size", "1"),
            ("--pp-size", "1"),
            ("--dp-size", "1"),
            ("--max-running-requests", "32"),
            ("--mem-fraction-static", "0.9"),
            ("--context-length", "32768"),
            ("--enable-metrics", None),
            ("--enable-priority-scheduling", None),
            ("--schedule-low-priority-values-first", None),
        ],
    },
    "tp4": {"vllm": [("--tensor-parallel-size", "4")], "sglang": [("--tp-size", "4")]},
    "dp2": {"vllm": [("--data-parallel-size", "2")], "sglang": [("--dp-size", "2")]},
    "max-model-len": {
        "vllm": [
            ("--max-model-len", "16384"),
            ("--max-num-seqs", "64"),
            ("--gpu-memory-utilization", "0.85"),
            ("--max-num-batched-tokens", "4096"),
        ],
        "sglang": [
            ("--context-length", "16384"),
            ("--max-running-requests", "64"),
            ("--mem-fraction-static", "0.85"),
            ("--chunked-prefill-size", "4096"),
        ],
    },
    "pd-prefill": {
        "vllm": [("--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}')],
        "sglang": [("--disaggregation-mode", "prefill"), ("--disaggregation-transfer-backend", "nixl")],
    },
    "pd-decode": {
        "vllm": [("--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}')],
        "sglang": [("--disaggregation-mode", "decode"), ("--disaggregation-transfer-backend", "nixl")],
    },
    "multinode-leader": {
        "vllm": [
            ("--tensor-parallel-size", "8"),
            ("--pipeline-parallel-size", "2"),
            ("--distributed-executor-backend", "mp"),
            ("--nnodes", "2"),
            ("--node-rank", "0"),
            ("--master-addr", "$(LWS_LEADER_ADDRESS)"),
            ("--master-port", "29500"),
        ],
        "sglang": [
            ("--tp-size", "8"),
            ("--pp-size", "2"),
            ("--nnodes", "2"),
            ("--node-rank", "0"),
            ("--dist-init-addr", "$(LWS_LEADER_ADDRESS):29500"),
        ],
    },
    "multinode-worker": {
        "vllm": [
            ("--nnodes", "2"),
            ("--node-rank", "$(LWS_WORKER_INDEX)"),
            ("--master-addr", "$(LWS_LEADER_ADDRESS)"),
            ("--headless", None),
        ],
        "sglang": [
            ("--nnodes", "2"),
            ("--node-rank", "$(LWS_WORKER_INDEX)"),
            ("--dist-init-addr", "$(LWS_LEADER_ADDRESS):29500"),
        ],
    },
}
# flags a case must not have
ABSENT: dict[str, dict[str, list[str]]] = {
    "defaults": {
        "vllm": ["--kv-transfer-config", "--nnodes", "--headless"],
        "sglang": ["--disaggregation-mode", "--nnodes", "--disable-radix-cache"],
    },
    "multinode-leader": {"vllm": ["--headless"], "sglang": []},
}


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def engine(request: pytest.FixtureRequest) -> EngineFlags:
    return load(request.param, VERSIONS[request.param])


def argv_of(engine: str, case: dict[str, Any]) -> list[str]:
    spec = spec_of(engine, **case["spec"])
    role: Role = case.get("role", "both")
    ctx = LaunchContext(
        "chat", "Qwen/Qwen3-8B", spec, 60000, "0.0.0.0", role, case.get("topology", Topology())
    )
    return adapter_for(engine).args(ctx)


def value_of(argv: list[str], flag: str) -> str | None:
    i = argv.index(flag)
    following = argv[i + 1] if i + 1 < len(argv) else None
    return None if following is None or following.startswith("--") else following


def expanded(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        for var, value in POD_ENV.items():
            arg = arg.replace(var, value)
        out.append(arg)
    return out


def test_targets_name_the_fixture_versions() -> None:
    assert VLLM.targets == f"vLLM {VERSIONS['vllm']}"
    assert VLLM.image_for() == f"vllm/vllm-openai:v{VERSIONS['vllm']}"
    assert SGLANG.targets == f"SGLang {VERSIONS['sglang']}"
    assert SGLANG.image_for().startswith(f"lmsysorg/sglang:v{VERSIONS['sglang']}-")


@pytest.mark.parametrize(
    ("adapter", "version", "image"),
    [
        (VLLM, "0.30.1", "vllm/vllm-openai:v0.30.1"),
        (SGLANG, "0.5.21", "lmsysorg/sglang:v0.5.21-cu130"),
        (BUILTIN, "0.2.0", "tideserve/tideserve:0.2.0"),
        (BUILTIN, "", f"tideserve/tideserve:{__version__}"),
    ],
)
def test_spec_engine_version_picks_the_image(adapter: EngineAdapter, version: str, image: str) -> None:
    assert adapter.image_for(version) == image


@pytest.mark.parametrize("case", sorted(CASES))
def test_flags_parse_with_the_engines_parser(engine: EngineFlags, case: str) -> None:
    argv = argv_of(engine.engine, CASES[case])
    namespace = parse(engine, expanded(argv))
    if engine.engine == "vllm":
        # `vllm serve` takes the model as its first positional argument.
        assert argv[0] == "Qwen/Qwen3-8B" and namespace.model_tag == "Qwen/Qwen3-8B"
    assert namespace.served_model_name in ("chat", ["chat"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameters_land_on_the_engines_flags(engine: EngineFlags, case: str) -> None:
    argv = argv_of(engine.engine, CASES[case])
    for flag, value in EXPECTED[case][engine.engine]:
        assert flag in argv, f"{flag} missing from {argv}"
        assert value_of(argv, flag) == value, f"{flag}: {argv}"
    for flag in ABSENT.get(case, {}).get(engine.engine, []):
        assert flag not in argv
    flags = [a for a in argv if a.startswith("--")]
    assert len(flags) == len(set(flags)), f"a flag is repeated: {argv}"


def test_vllm_kv_transfer_config_is_json_with_a_known_role() -> None:
    for role, kv_role in (("prefill", "kv_producer"), ("decode", "kv_consumer")):
        argv = argv_of("vllm", CASES[f"pd-{role}"])
        config = json.loads(value_of(argv, "--kv-transfer-config") or "")
        # vLLM 0.33.0's KVRole literals (vllm/config/kv_transfer.py)
        assert config == {"kv_connector": "NixlConnector", "kv_role": kv_role}


def test_programs() -> None:
    assert VLLM.program("container") == ["vllm", "serve"]
    assert VLLM.program("local")[-1] == "serve" and VLLM.program("local")[0].endswith("vllm")
    assert SGLANG.program("container") == ["python3", "-m", "sglang.launch_server"]
    assert SGLANG.program("local") == [sys.executable, "-m", "sglang.launch_server"]
    assert VLLM.health_path == SGLANG.health_path == "/health"


def test_installed_reads_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    versions = {"vllm": "0.33.0"}

    def version(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", version)
    assert VLLM.installed() == "0.33.0" and SGLANG.installed() is None


def test_metric_names_use_the_canonical_keys() -> None:
    assert list(ADAPTERS) == ["builtin", "vllm", "sglang"]
    for adapter in (VLLM, SGLANG):
        assert set(adapter.metric_names) <= set(BUILTIN_NAMES), adapter.name
        assert all(names for names in adapter.metric_names.values())
    # vLLM publishes no capacity series: it comes from the labels of vllm:cache_config_info.
    assert "cache_tokens" not in VLLM.metric_names and set(SGLANG.metric_names) == set(BUILTIN_NAMES)
