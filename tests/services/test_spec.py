import copy
import json
from typing import Any

import pytest
import yaml

from tideserve.services.spec import (
    ServiceSpec,
    SpecError,
    apply_defaults,
    format_quantity,
    immutable_changes,
    immutable_errors,
    parse_quantity,
    parse_service_document,
    revision_hash,
    to_document,
    to_yaml,
    validate_against_hardware,
)

GiB = 2**30


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def document(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "chat-small"}, "spec": merge({"model": "smollm2-135m-instruct"}, spec)}


def parse(**spec: Any) -> ServiceSpec:
    return parse_service_document(document(**spec))


def errors_of(source: Any) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_service_document(source)
    return info.value.errors


FULL_YAML = """\
apiVersion: tideserve/v1
kind: Service
metadata:
  name: chat-small
  description: |-
    Small chat model.
    Second line.
spec:
  model: smollm2-135m-instruct
  cluster: local
  resourceGroup: gpu-a100
  engine:
    name: vllm
    version: 0.10.1
  replicas: 3
  resources:
    cpu: 0.5
    memory: 4Gi
    gpus: 4
  deployment:
    mode: pdDisaggregated
    prefillReplicas: 2
    decodeReplicas: 1
  access:
    servicePort: 9000
    targetPort: 60001
    exposure: external
  env:
    HF_HOME: /data/hf
    FLAG: 'yes'
  parameters:
    tpSize: 2
    ppSize: 2
    dpSize: 1
    maxModelLen: 8192
    maxBatchSize: 64
    gpuMemoryUtilization: 0.85
    maxNumBatchedTokens: 4096
  routing:
    policy: prefix_aware
    canary:
      stableRevision: 1
      stableReplicas: 2
      weight: 10
    rateLimit: {}
    queue:
      maxSize: 256
      timeoutSeconds: 30.0
    requestTimeoutSeconds: 600.0
"""


# --- valid documents -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "check"),
    [
        (document(), lambda s: s.spec.replicas == 1 and s.spec.engine.name == "builtin"),
        (document(), lambda s: (s.spec.cluster, s.spec.resource_group) == ("local", "default")),
        (document(), lambda s: (s.spec.access.service_port, s.spec.access.target_port) == (8080, 60000)),
        (document(), lambda s: s.api_version == "tideserve/v1" and s.kind == "Service"),
        # flat form: the spec body with name/description beside it
        (
            {"name": "flat", "description": "d", "model": "m", "replicas": 2},
            lambda s: (s.metadata.name, s.metadata.description, s.spec.replicas) == ("flat", "d", 2),
        ),
        ("name: flat\nmodel: m\n", lambda s: s.metadata.name == "flat"),
        # snake_case works as well as camelCase
        (
            {
                "metadata": {"name": "a"},
                "spec": {"model": "m", "resource_group": "g", "parameters": {"tp_size": 1}},
            },
            lambda s: s.spec.resource_group == "g",
        ),
        (document(resources={"cpu": "500m"}), lambda s: s.spec.resources.cpu == 0.5),
        (document(resources={"cpu": "1.5"}), lambda s: s.spec.resources.cpu == 1.5),
        (document(resources={"cpu": 4}), lambda s: s.spec.resources.cpu == 4.0),
        (document(resources={"memory": 1073741824}), lambda s: s.spec.resources.memory == GiB),
        (document(resources={"memory": "512Mi"}), lambda s: s.spec.resources.memory == 512 * 2**20),
        (
            document(resources={"gpus": 4}, parameters={"tpSize": 2, "ppSize": 2}),
            lambda s: s.spec.parameters.tp_size == 2,
        ),
        (
            document(
                resources={"gpus": 8},
                parameters={"tpSize": 8},
                deployment={"mode": "multiNode", "nodesPerInstance": 2},
            ),
            lambda s: s.spec.deployment.nodes_per_instance == 2,
        ),
        (
            document(deployment={"mode": "pdDisaggregated"}),
            lambda s: (s.spec.deployment.prefill_replicas, s.spec.deployment.decode_replicas) == (1, 1),
        ),
        (
            document(parameters={"gpuMemoryUtilization": 1}),
            lambda s: s.spec.parameters.gpu_memory_utilization == 1,
        ),
        (
            document(parameters={"maxNumBatchedTokens": 32}),
            lambda s: s.spec.parameters.max_num_batched_tokens == 32,
        ),
        (document(replicas=0), lambda s: s.spec.replicas == 0),
        (document(replicas=64), lambda s: s.spec.replicas == 64),
        (
            document(access={"targetPort": 65535, "servicePort": 1}),
            lambda s: s.spec.access.target_port == 65535,
        ),
        (document(engine={"name": "sglang", "version": "0.4.6"}), lambda s: s.spec.engine.version == "0.4.6"),
        ({"metadata": {"name": "a" * 63}, "spec": {"model": "m"}}, lambda s: len(s.metadata.name) == 63),
        ({"metadata": {"name": "a", "description": "x" * 1000}, "spec": {"model": "m"}}, lambda s: True),
        (json.dumps(document()), lambda s: s.metadata.name == "chat-small"),
        ('{\n\t"name": "tabs",\n\t"model": "m"\n}', lambda s: s.metadata.name == "tabs"),
        (yaml.safe_dump(document()).encode(), lambda s: s.metadata.name == "chat-small"),
        (FULL_YAML, lambda s: s.spec.env == {"HF_HOME": "/data/hf", "FLAG": "yes"}),
    ],
)
def test_valid(source, check):
    assert check(parse_service_document(source))


# --- invalid documents ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "loc", "fragment"),
    [
        ({"metadata": {}, "spec": {"model": "m"}}, "metadata.name", "is required"),
        ({"metadata": {"name": "a"}, "spec": {}}, "spec.model", "model plaza"),
        ({"metadata": {"name": "a"}}, "spec", "is required"),
        ({"metadata": {"name": "a"}, "spec": []}, "spec", "must be a mapping"),
        ({"metadata": {"name": "a"}, "spec": {"model": ""}}, "spec.model", "must not be empty"),
        ({"metadata": {"name": "Chat_Small"}, "spec": {"model": "m"}}, "metadata.name", "'chat-small'"),
        ({"metadata": {"name": "1chat"}, "spec": {"model": "m"}}, "metadata.name", "starting with a letter"),
        (
            {"metadata": {"name": "chat-"}, "spec": {"model": "m"}},
            "metadata.name",
            "not a valid service name",
        ),
        ({"metadata": {"name": "a" * 64}, "spec": {"model": "m"}}, "metadata.name", "1-63"),
        ({"metadata": {"name": True}, "spec": {"model": "m"}}, "metadata.name", "quote it"),
        (
            {"metadata": {"name": "a", "description": "x" * 1001}, "spec": {"model": "m"}},
            "metadata.description",
            "at most 1000",
        ),
        (
            {"apiVersion": "v1", "metadata": {"name": "a"}, "spec": {"model": "m"}},
            "apiVersion",
            "'tideserve/v1'",
        ),
        ({"kind": "Deployment", "metadata": {"name": "a"}, "spec": {"model": "m"}}, "kind", "'Service'"),
        ({"name": "a", "spec": {"model": "m"}}, "name", "goes under metadata.name"),
        (
            document(autoscaling={"maxReplicas": 4, "targets": [{"metric": "bogus", "value": 1}]}),
            "spec.autoscaling.targets.0.metric",
            "unknown metric 'bogus'",
        ),
        (
            document(
                autoscaling={
                    "maxReplicas": 2,
                    "minReplicas": 3,
                    "targets": [{"metric": "waitingPerReplica", "value": 4}],
                }
            ),
            "spec.autoscaling.minReplicas",
            "above maxReplicas=2",
        ),
        (document(replica=2), "spec.replica", "did you mean 'replicas'"),
        (
            document(autoscaling={"maxReplica": 3, "targets": [{"metric": "waitingPerReplica", "value": 1}]}),
            "spec.autoscaling.maxReplica",
            "did you mean 'maxReplicas'",
        ),
        (
            document(autoscaling={"maxReplicas": 3, "targets": [{"metric": "waitingPerReplica", "valu": 1}]}),
            "spec.autoscaling.targets.0.valu",
            "did you mean 'value'",
        ),
        (
            document(autoscaling={"targets": [{"metric": "waitingPerReplica", "value": 1}]}),
            "spec.autoscaling.maxReplicas",
            "is required: set the most replicas",
        ),
        (document(resources={"gpu": 1}), "spec.resources.gpu", "did you mean 'gpus'"),
        (document(parameters={"tpsize": 1}), "spec.parameters.tpsize", "did you mean 'tpSize'"),
        (document(replicas="two"), "spec.replicas", "must be a whole number, got 'two'"),
        (document(replicas="2"), "spec.replicas", "whole number"),
        (document(replicas=1.5), "spec.replicas", "whole number"),
        (document(replicas=True), "spec.replicas", "whole number"),
        (document(replicas=None), "spec.replicas", "null"),
        (document(replicas=-1), "spec.replicas", "at least 0"),
        (document(replicas=65), "spec.replicas", "at most 64"),
        (document(engine={"name": "tgi"}), "spec.engine.name", "'builtin', 'vllm' or 'sglang'"),
        (document(engine={"version": 0.9}), "spec.engine.version", "quote it"),
        (document(engine="vllm"), "spec.engine", "must be a mapping"),
        (document(resources={"cpu": 0}), "spec.resources.cpu", "greater than 0"),
        (document(resources={"cpu": "two"}), "spec.resources.cpu", "millicores"),
        (document(resources={"cpu": True}), "spec.resources.cpu", "must be a number"),
        (document(resources={"cpu": float("inf")}), "spec.resources.cpu", "finite"),
        (document(resources={"memory": "4GB"}), "spec.resources.memory", "'4Gi'"),
        (document(resources={"memory": "lots"}), "spec.resources.memory", "not a memory quantity"),
        (document(resources={"memory": 0}), "spec.resources.memory", "greater than 0"),
        (document(resources={"memory": [4]}), "spec.resources.memory", "whole number"),
        (document(resources={"gpus": -1}), "spec.resources.gpus", "at least 0"),
        (document(deployment={"mode": "cluster"}), "spec.deployment.mode", "'single', 'multiNode' or"),
        (document(deployment={"mode": "multiNode"}), "spec.deployment.nodesPerInstance", "is required"),
        (
            document(deployment={"nodesPerInstance": 2}),
            "spec.deployment.nodesPerInstance",
            "only to mode multiNode",
        ),
        (
            document(deployment={"mode": "multiNode", "nodesPerInstance": 1}),
            "spec.deployment.nodesPerInstance",
            "at least 2",
        ),
        (document(deployment={"prefillReplicas": 1}), "spec.deployment.prefillReplicas", "pdDisaggregated"),
        (
            document(deployment={"mode": "multiNode", "nodesPerInstance": 2, "decodeReplicas": 1}),
            "spec.deployment.decodeReplicas",
            "pdDisaggregated",
        ),
        (
            document(deployment={"mode": "pdDisaggregated", "decodeReplicas": 0}),
            "spec.deployment.decodeReplicas",
            "at least 1",
        ),
        (
            document(
                resources={"gpus": 3},
                parameters={"tpSize": 3},
                deployment={"mode": "multiNode", "nodesPerInstance": 2},
            ),
            "spec.resources.gpus",
            "multiple of nodesPerInstance",
        ),
        (
            document(deployment={"mode": "multiNode", "nodesPerInstance": 2}),
            "spec.resources.gpus",
            "multiple of nodesPerInstance",
        ),
        (document(access={"servicePort": 0}), "spec.access.servicePort", "at least 1"),
        (document(access={"servicePort": 65536}), "spec.access.servicePort", "at most 65535"),
        (document(access={"targetPort": 59999}), "spec.access.targetPort", "at least 60000"),
        (document(access={"exposure": "public"}), "spec.access.exposure", "'internal' or 'external'"),
        (document(parameters={"tpSize": 0}), "spec.parameters.tpSize", "at least 1"),
        (document(parameters={"ppSize": 0}), "spec.parameters.ppSize", "at least 1"),
        (document(parameters={"dpSize": 0}), "spec.parameters.dpSize", "at least 1"),
        (document(parameters={"maxModelLen": 1023}), "spec.parameters.maxModelLen", "at least 1024"),
        (document(parameters={"maxBatchSize": 0}), "spec.parameters.maxBatchSize", "at least 1"),
        (
            document(parameters={"gpuMemoryUtilization": 0}),
            "spec.parameters.gpuMemoryUtilization",
            "greater than 0",
        ),
        (
            document(parameters={"gpuMemoryUtilization": 1.1}),
            "spec.parameters.gpuMemoryUtilization",
            "at most 1",
        ),
        (
            document(parameters={"gpuMemoryUtilization": "90%"}),
            "spec.parameters.gpuMemoryUtilization",
            "number",
        ),
        (
            document(parameters={"maxNumBatchedTokens": 0}),
            "spec.parameters.maxNumBatchedTokens",
            "at least 1",
        ),
        (
            document(parameters={"maxBatchSize": 64, "maxNumBatchedTokens": 32}),
            "spec.parameters.maxNumBatchedTokens",
            "raise it to ≥ 64",
        ),
        # tpSize × ppSize × dpSize must use exactly the instance's GPUs
        (
            document(resources={"gpus": 4}, parameters={"tpSize": 2}),
            "spec.parameters.tpSize",
            "set tpSize × ppSize × dpSize to 4",
        ),
        (
            document(resources={"gpus": 1}, parameters={"dpSize": 2}),
            "spec.parameters.tpSize",
            "or set gpus to 2",
        ),
        (document(parameters={"dpSize": 2}), "spec.parameters.dpSize", "CPU instance"),
        (
            document(resources={"gpus": 2}, parameters={"tpSize": 2, "ppSize": 2}),
            "spec.parameters.tpSize",
            "= 4 but",
        ),
        (document(parameters={"tpSize": 2}), "spec.parameters.tpSize", "CPU instance"),
        (document(parameters={"ppSize": 2}), "spec.parameters.ppSize", "CPU instance"),
    ],
)
def test_invalid(source, loc, fragment):
    errors = errors_of(source)
    matching = [e for e in errors if e["loc"] == loc]
    assert matching, errors
    assert any(fragment in e["msg"] for e in matching), matching


def test_all_field_errors_reported_at_once():
    errors = errors_of(document(replicas="two", access={"exposure": "public"}, extra=1))
    assert {e["loc"] for e in errors} == {"spec.replicas", "spec.access.exposure", "spec.extra"}


def test_cross_field_errors_reported_together():
    source = document(
        resources={"gpus": 3},
        parameters={"tpSize": 2},
        deployment={"mode": "multiNode", "nodesPerInstance": 2},
    )
    assert [e["loc"] for e in errors_of(source)] == ["spec.parameters.tpSize", "spec.resources.gpus"]


def test_spec_error_message_names_fields():
    with pytest.raises(SpecError) as info:
        parse_service_document(document(replicas="two"))
    assert str(info.value) == "spec.replicas: must be a whole number, got 'two'"


# --- malformed text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("metadata:\n  name: a\n spec: x\n", "malformed YAML at line 3 column 2"),
        ("spec: [1, 2\n", "malformed YAML at line 2 column 1"),
        ("name: a\nmodel: m\nname: b\n", "line 3 column 1: duplicate key 'name'"),
        ('{"name": "a",\n "model": }', "malformed JSON at line 2 column 11"),
        ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ("- name: a\n", "the document is a list"),
        ("just text", "the document is 'just text'"),
        ("", "the document is empty"),
        ("# only a comment\n", "the document is empty"),
        (b"\xff\xfe", "not UTF-8"),
        (42, "the document is 42"),
    ],
)
def test_malformed(source, fragment):
    errors = errors_of(source)
    assert errors[0]["loc"] == ""
    assert fragment in errors[0]["msg"], errors


def test_yaml_merge_keys_may_be_overridden():
    text = "metadata: {name: a}\nspec:\n  <<: {model: m, replicas: 2}\n  replicas: 3\n"
    assert parse_service_document(text).spec.replicas == 3


# --- env -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"A": "1", "B_2": "x"}, {"A": "1", "B_2": "x"}),
        ({"PORT": 8000}, {"PORT": "8000"}),
        (["A=1", "B=x=y"], {"A": "1", "B": "x=y"}),
        ("A=1\nB=2", {"A": "1", "B": "2"}),
        (
            "\n# pasted from a .env file\nA = 1 \n\n  B='two words'\nC=\"q\"\n",
            {"A": "1", "B": "two words", "C": "q"},
        ),
        (["# comment", "", "_X="], {"_X": ""}),
        ("A=", {"A": ""}),
        (None, {}),
        ({}, {}),
    ],
)
def test_env_forms(env, expected):
    assert parse(env=env).spec.env == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"1A": "x"}, "'1A' is not a valid variable name"),
        ({"A-B": "x"}, "'A-B' is not a valid variable name"),
        ({"DEBUG": True}, "DEBUG is true, not a string: quote it"),
        ({"V": 1.10}, "V is 1.1, not a string"),
        ({"V": None}, "V is null"),
        ({1: "x"}, "variable name 1 is not a string"),
        ("A=1\nNOEQUALS\n", "line 2 'NOEQUALS' has no '='"),
        ("A=1\nB=2\nA=3", "A is set twice (lines 1 and 3)"),
        ("BAD KEY=1", "line 1: 'BAD KEY' is not a valid variable name"),
        (["A=1", 5], "entry 2 is 5"),
        (5, "use a mapping"),
    ],
)
def test_env_invalid(env, fragment):
    errors = errors_of(document(env=env))
    assert errors[0]["loc"] == "spec.env"
    assert fragment in errors[0]["msg"], errors


def test_env_keeps_order_and_round_trips():
    spec = parse(env="Z=1\nA=2")
    assert list(to_document(spec)["spec"]["env"]) == ["Z", "A"]
    assert parse_service_document(to_yaml(spec)).spec.env == {"Z": "1", "A": "2"}


# --- quantities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4Gi", 4 * GiB),
        ("512Mi", 512 * 2**20),
        ("1.5Gi", 1536 * 2**20),
        ("2Ki", 2048),
        ("1Ti", 2**40),
        ("4G", 4 * 10**9),
        ("500M", 500 * 10**6),
        ("1k", 1000),
        ("1024", 1024),
        (" 8Gi ", 8 * GiB),
        (".5Gi", GiB // 2),
        ("0", 0),
        (1073741824, GiB),
    ],
)
def test_parse_quantity(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("4GB", "write '4Gi' (powers of 1024) or '4G' (powers of 1000)"),
        ("4gib", "write '4Gi'"),
        ("2kb", "or '2k'"),
        ("4Xi", "unknown suffix 'Xi'"),
        ("lots", "not a memory quantity"),
        ("-1Gi", "not a memory quantity"),
        ("4 Gi", "not a memory quantity"),
        ("", "not a memory quantity"),
        ("1.5", "not a whole number of bytes"),
        (-5, "negative"),
        (True, "not a memory quantity"),
        (4.0, "not a memory quantity"),
    ],
)
def test_parse_quantity_invalid(value, fragment):
    with pytest.raises(ValueError) as info:
        parse_quantity(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (4 * GiB, "4Gi"),
        (1536 * 2**20, "1536Mi"),
        (4 * 10**9, "4G"),
        (1000, "1k"),
        (1024, "1Ki"),
        (1023, "1023"),
        (0, "0"),
        (3 * 2**60, "3Ei"),
    ],
)
def test_format_quantity(n, text):
    assert format_quantity(n) == text
    assert parse_quantity(text) == n


# --- round trips ---------------------------------------------------------------------------------


def test_full_yaml_prints_back_unchanged():
    assert to_yaml(parse_service_document(FULL_YAML)) == FULL_YAML


@pytest.mark.parametrize(
    "source",
    [
        document(),
        {"name": "flat", "model": "m", "env": ["A=1"], "resources": {"cpu": "250m", "memory": 3 * 10**9}},
        document(
            resources={"gpus": 8},
            parameters={"tpSize": 4, "ppSize": 2, "maxModelLen": 4096, "maxNumBatchedTokens": 64},
            deployment={"mode": "multiNode", "nodesPerInstance": 2},
        ),
        document(env={"ON": "on", "NUM": "0123", "EMPTY": "", "NULL": "null", "MULTI": "a\nb"}),
        {"metadata": {"name": "a", "description": "multi\nline: yes\n"}, "spec": {"model": "m"}},
        FULL_YAML,
    ],
)
def test_round_trip(source):
    spec = parse_service_document(source)
    printed = to_yaml(spec)
    again = parse_service_document(printed)
    assert again == spec
    assert to_yaml(again) == printed
    assert parse_service_document(json.dumps(to_document(spec))) == spec


def test_document_is_full_and_ordered():
    doc = to_document(parse(deployment={"mode": "pdDisaggregated"}))
    assert list(doc) == ["apiVersion", "kind", "metadata", "spec"]
    assert list(doc["metadata"]) == ["name", "description"]
    assert list(doc["spec"]) == [
        "model", "cluster", "resourceGroup", "engine", "replicas", "resources",
        "deployment", "access", "env", "parameters", "routing",
    ]  # fmt: skip
    assert doc["spec"]["resources"] == {"cpu": 1, "memory": "2Gi", "gpus": 0}
    assert doc["spec"]["engine"] == {"name": "builtin", "version": ""}
    assert doc["spec"]["deployment"] == {"mode": "pdDisaggregated", "prefillReplicas": 1, "decodeReplicas": 1}
    assert doc["spec"]["access"] == {"servicePort": 8080, "targetPort": 60000, "exposure": "internal"}
    # unset until apply_defaults resolves them against the model
    assert doc["spec"]["parameters"] == {
        "tpSize": 1, "ppSize": 1, "dpSize": 1, "maxBatchSize": 32, "gpuMemoryUtilization": 0.9,
    }  # fmt: skip


# --- apply_defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "max_context", "max_model_len", "batched"),
    [
        ({}, None, 32768, 2048),
        ({}, 8192, 8192, 2048),
        ({}, 131072, 32768, 2048),
        ({}, 1024, 1024, 2048),
        ({"maxModelLen": 4096}, 8192, 4096, 2048),
        ({"maxModelLen": 65536}, None, 65536, 2048),
        ({"maxModelLen": 8192}, 8192, 8192, 2048),
        ({"maxBatchSize": 256}, 8192, 8192, 2048),
        ({"maxBatchSize": 4096}, 8192, 8192, 4096),
        ({"maxNumBatchedTokens": 512}, 8192, 8192, 512),
    ],
)
def test_apply_defaults(parameters, max_context, max_model_len, batched):
    spec = apply_defaults(parse(parameters=parameters), max_context)
    assert (spec.spec.parameters.max_model_len, spec.spec.parameters.max_num_batched_tokens) == (
        max_model_len,
        batched,
    )
    assert apply_defaults(spec, max_context) == spec  # idempotent
    assert parse_service_document(to_yaml(spec)) == spec


@pytest.mark.parametrize(
    ("parameters", "max_context", "loc", "fragment"),
    [
        ({"maxModelLen": 65536}, 32768, "spec.parameters.maxModelLen", "exceeds the 32768-token context"),
        ({"maxModelLen": 8193}, 8192, "spec.parameters.maxModelLen", "set maxModelLen ≤ 8192"),
        ({}, 512, "spec.model", "512-token context, below the 1024"),
    ],
)
def test_apply_defaults_invalid(parameters, max_context, loc, fragment):
    with pytest.raises(SpecError) as info:
        apply_defaults(parse(parameters=parameters), max_context)
    [error] = info.value.errors
    assert error["loc"] == loc
    assert fragment in error["msg"]
    assert "'smollm2-135m-instruct'" in error["msg"]


def test_apply_defaults_does_not_mutate():
    spec = parse()
    apply_defaults(spec, 8192)
    assert spec.spec.parameters.max_model_len is None


# --- hardware ------------------------------------------------------------------------------------

MULTI = {"mode": "multiNode", "nodesPerInstance": 2}


@pytest.mark.parametrize(
    ("spec", "nodes", "expected"),
    [
        # nodes: (gpus, cpus, memory GiB) per node
        ({}, [(0, 8, 16)], []),
        ({"resources": {"cpu": 8, "memory": "16Gi"}}, [(0, 8, 16)], []),
        ({"resources": {"gpus": 1}, "parameters": {}}, [(0, 8, 16), (1, 4, 8)], []),
        (
            {"resources": {"gpus": 4}, "parameters": {"tpSize": 4}},
            [(1, 8, 16), (0, 64, 256)],
            [
                (
                    "spec.resources.gpus",
                    "resources.gpus=4 but the largest node in resource group 'default' has 1 GPU: "
                    "lower gpus or add a node with more GPUs",
                )
            ],
        ),
        (
            {"resources": {"cpu": 16}},
            [(0, 8, 16), (0, 12, 16)],
            [
                (
                    "spec.resources.cpu",
                    "resources.cpu=16 but the largest node in resource group 'default' has 12 CPUs: "
                    "lower cpu or add a node with more CPUs",
                )
            ],
        ),
        (
            {"resources": {"memory": "32Gi"}, "resourceGroup": "small"},
            [(0, 8, 16)],
            [
                (
                    "spec.resources.memory",
                    "resources.memory=32Gi but the largest node in resource group 'small' has 16Gi of "
                    "memory: lower memory or add a node with more memory",
                )
            ],
        ),
        (
            {"resources": {"cpu": 16, "memory": "32Gi"}},
            [(0, 8, 16)],
            [("spec.resources.cpu", "has 8 CPUs"), ("spec.resources.memory", "has 16Gi of memory")],
        ),
        ({}, [], [("spec.resourceGroup", "resource group 'default' has no nodes: add a node")]),
        # multiNode: each of nodesPerInstance nodes holds an equal share of the instance
        (
            {
                "resources": {"gpus": 8, "cpu": 16, "memory": "64Gi"},
                "parameters": {"tpSize": 8},
                "deployment": MULTI,
            },
            [(4, 8, 32), (4, 8, 32)],
            [],
        ),
        (
            {"resources": {"gpus": 16}, "parameters": {"tpSize": 16}, "deployment": MULTI},
            [(8, 64, 512), (8, 64, 512)],
            [],  # tensor parallelism across nodes is the user's call (SGLang does tp 16 over 2 nodes)
        ),
        (
            {"resources": {"gpus": 8}, "parameters": {"tpSize": 4, "ppSize": 2}, "deployment": MULTI},
            [(8, 64, 512), (2, 64, 512)],
            [
                (
                    "spec.resources.gpus",
                    "resources.gpus=8 over nodesPerInstance=2 needs 4 GPUs on each of 2 nodes, but resource "
                    "group 'default' has 1 such node(s): lower gpus or add nodes with more GPUs",
                )
            ],
        ),
        (
            {
                "resources": {"gpus": 4},
                "parameters": {"tpSize": 4},
                "deployment": {"mode": "multiNode", "nodesPerInstance": 4},
            },
            [(8, 64, 512), (8, 64, 512)],
            [
                (
                    "spec.deployment.nodesPerInstance",
                    "nodesPerInstance=4 but resource group 'default' has 2 node(s)",
                )
            ],
        ),
        (
            {"resources": {"gpus": 2, "memory": "64Gi"}, "parameters": {"tpSize": 2}, "deployment": MULTI},
            [(1, 8, 64), (1, 8, 16)],
            [("spec.resources.memory", "needs 32Gi of memory on each of 2 nodes")],
        ),
        # prefill and decode instances are single-node instances
        (
            {
                "resources": {"gpus": 2},
                "parameters": {"tpSize": 2},
                "deployment": {"mode": "pdDisaggregated"},
            },
            [(2, 8, 64)],
            [],
        ),
    ],
)
def test_validate_against_hardware(spec, nodes, expected):
    errors = validate_against_hardware(
        parse(**spec), [n[0] for n in nodes], [float(n[1]) for n in nodes], [n[2] * GiB for n in nodes]
    )
    assert [e["loc"] for e in errors] == [loc for loc, _ in expected]
    for error, (_, fragment) in zip(errors, expected, strict=True):
        assert fragment in error["msg"], error


def test_fractional_cpu_message():
    [error] = validate_against_hardware(parse(resources={"cpu": "2500m"}), [0], [2.0], [GiB * 4])
    assert error["msg"].startswith(
        "resources.cpu=2.5 but the largest node in resource group 'default' has 2 CPUs"
    )


# --- immutable fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (document(), document(replicas=5, resources={"cpu": 4}, env={"A": "1"}), []),
        (document(), document(engine={"version": "0.2"}), []),
        (document(), document(engine={"name": "vllm"}), ["spec.engine.name"]),
        (document(), document(deployment={"mode": "pdDisaggregated"}), ["spec.deployment.mode"]),
        (
            document(deployment={"mode": "pdDisaggregated"}),
            document(deployment={"mode": "pdDisaggregated", "prefillReplicas": 3}),
            [],
        ),
        (
            document(resources={"gpus": 4}, parameters={"tpSize": 4}, deployment=MULTI),
            document(
                resources={"gpus": 4},
                parameters={"tpSize": 4},
                deployment={"mode": "multiNode", "nodesPerInstance": 4},
            ),
            ["spec.deployment.nodesPerInstance"],
        ),
        (
            document(),
            document(
                resources={"gpus": 4}, parameters={"tpSize": 4}, deployment=MULTI, engine={"name": "vllm"}
            ),
            ["spec.engine.name", "spec.deployment.mode", "spec.deployment.nodesPerInstance"],
        ),
        (
            document(),
            {"metadata": {"name": "other"}, "spec": {"model": "smollm2-135m-instruct"}},
            ["metadata.name"],
        ),
    ],
)
def test_immutable_changes(old, new, expected):
    assert immutable_changes(parse_service_document(old), parse_service_document(new)) == expected


def test_immutable_errors_say_what_changed():
    errors = immutable_errors(
        parse(),
        parse(engine={"name": "vllm"}, resources={"gpus": 2}, parameters={"tpSize": 2}, deployment=MULTI),
    )
    assert errors[0] == {
        "loc": "spec.engine.name",
        "msg": "spec.engine.name cannot change after creation (was builtin, got vllm): "
        "create a new service instead",
    }
    assert errors[2]["msg"].startswith(
        "spec.deployment.nodesPerInstance cannot change after creation (was unset, got 2)"
    )


# --- revision hash -------------------------------------------------------------------------------

BASE = document(env={"A": "1", "B": "2"}, deployment={"mode": "pdDisaggregated"})


@pytest.mark.parametrize(
    "change",
    [
        {"spec": {"replicas": 7}},
        {"metadata": {"description": "now with a description"}},
        {"spec": {"access": {"servicePort": 9090, "exposure": "external"}}},
        {"spec": {"deployment": {"prefillReplicas": 3, "decodeReplicas": 2}}},
        {"spec": {"env": {"B": "2", "A": "1"}}},  # order of variables does not matter
        {"spec": {"env": "A=1\nB=2"}},  # nor the form they were written in
        {"spec": {"resources": {"memory": "2048Mi", "cpu": "1000m"}}},  # same amounts, other spellings
    ],
)
def test_revision_hash_ignores(change):
    assert revision_hash(parse_service_document(merge(BASE, change))) == revision_hash(
        parse_service_document(BASE)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"spec": {"model": "qwen2.5-0.5b-instruct"}},
        {"spec": {"env": {"A": "1", "B": "3"}}},
        {"spec": {"env": {"A": "1", "B": "2", "C": "3"}}},
        {"spec": {"resources": {"cpu": 2}}},
        {"spec": {"resources": {"memory": "3Gi"}}},
        {"spec": {"engine": {"version": "0.2"}}},
        {"spec": {"parameters": {"maxBatchSize": 64}}},
        {"spec": {"parameters": {"maxModelLen": 4096}}},
        {"spec": {"access": {"targetPort": 60100}}},
        {"spec": {"resourceGroup": "gpu"}},
        {"spec": {"cluster": "k8s"}},
    ],
)
def test_revision_hash_changes(change):
    assert revision_hash(parse_service_document(merge(BASE, change))) != revision_hash(
        parse_service_document(BASE)
    )


def test_revision_hash_is_short_and_stable():
    first = revision_hash(parse_service_document(BASE))
    assert len(first) == 12 and int(first, 16) >= 0
    assert revision_hash(parse_service_document(to_yaml(parse_service_document(BASE)))) == first
    # applying defaults twice changes nothing, so a re-applied spec does not roll
    once = apply_defaults(parse_service_document(BASE), 8192)
    assert revision_hash(apply_defaults(once, 8192)) == revision_hash(once)
