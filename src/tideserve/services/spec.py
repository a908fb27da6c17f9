"""The inference-service spec: the declarative document users write (YAML or JSON, camelCase), its
validation with messages that name the field and the fix, and the pure decisions made from it
(defaults that depend on the model, hardware bounds, immutable fields, the revision hash).

Two input forms are accepted. The document form is what `tideserve services yaml` prints:

    apiVersion: tideserve/v1        # optional, these values only
    kind: Service                   # optional, this value only
    metadata: {name: chat-small, description: ""}
    spec: {model: ..., cluster: local, resourceGroup: default, engine: {...}, replicas: 1,
           resources: {...}, deployment: {...}, access: {...}, env: {...}, parameters: {...}}

The flat form (a convenience for REST bodies) is the `spec` body with `name` and `description` beside
it at the top level. A mapping with any of apiVersion, kind, metadata or spec at its top level is read
as the document form; any other mapping as the flat form. Error locations always use the document
form's dotted paths (`spec.parameters.tpSize`), whichever form came in.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tideserve.autoscaler.policy import AutoscalingSpec, required_hint
from tideserve.services.specbase import FieldError, SpecError, _Model, _Violations, model_at

__all__ = ["FieldError", "SpecError"]  # re-exported: callers import the error types from here

API_VERSION = "tideserve/v1"
KIND = "Service"
DEFAULT_MAX_MODEL_LEN = 32768
MIN_MAX_MODEL_LEN = 1024
# vLLM's chunked-prefill token budget for API servers: a prefill chunk this size keeps the device busy
# while a decode step that shares the batch stays short (TPOT).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


# --- quantities ----------------------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([A-Za-z]*)")
_NEAR_SUFFIX = re.compile(r"([kmgtpe])(i?)b?", re.IGNORECASE)
_QUANTITY_HELP = (
    "use a whole number of bytes or a number with a Kubernetes suffix: Ki, Mi, Gi, Ti (powers of 1024) "
    "or k, M, G, T (powers of 1000), e.g. 4Gi"
)


def parse_quantity(value: str | int) -> int:
    """Bytes in a Kubernetes memory quantity ("4Gi", "512Mi", "1.5G", 1073741824)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{_show(value)} is not a memory quantity: {_QUANTITY_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative: memory is a byte count ≥ 0")
        return value
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a memory quantity: {_QUANTITY_HELP}")
    number, suffix = match.groups()
    multiplier = _BINARY.get(suffix) or _DECIMAL.get(suffix) or (1 if suffix == "" else None)
    if multiplier is None:
        near = _NEAR_SUFFIX.fullmatch(suffix)
        if near is None:
            raise ValueError(f"{value!r} has an unknown suffix {suffix!r}: {_QUANTITY_HELP}")
        unit = near.group(1).upper()
        decimal = "k" if unit == "K" else unit
        raise ValueError(
            f"{value!r} has an unknown suffix {suffix!r}: write '{number}{unit}i' "
            f"(powers of 1024) or '{number}{decimal}' (powers of 1000)"
        )
    amount = Decimal(number) * multiplier
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes: use a smaller unit")
    return int(amount)


def format_quantity(n: int) -> str:
    """The shortest exact Kubernetes spelling of `n` bytes (4294967296 -> "4Gi", 4000000000 -> "4G")."""
    candidates = [str(n)] + [
        f"{n // mult}{suffix}"
        for suffix, mult in (*_BINARY.items(), *_DECIMAL.items())
        if n >= mult and n % mult == 0
    ]
    return min(candidates, key=len)  # min keeps the first of equal length: binary before decimal


def _parse_memory(value: Any) -> Any:
    return parse_quantity(value) if isinstance(value, str | int) and not isinstance(value, bool) else value


_CPU = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(m?)")


def _parse_cpu(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # numbers go on to strict float validation, which names the wrong type
    match = _CPU.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a CPU amount: use cores as a number (0.5, 2) or millicores ('500m')"
        )
    number, milli = match.groups()
    return float(number) / 1000 if milli else float(number)


def _cpu_out(cores: float) -> float | int:
    return int(cores) if cores.is_integer() else cores


# --- env -----------------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_value(value: str) -> str:
    # Lines pasted from a .env file often quote their values; the quotes are not part of the value.
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _parse_env_lines(lines: list[Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    where: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not isinstance(line, str):
            raise ValueError(f"entry {number} is {_show(line)}, not a KEY=value string")
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"line {number} {text!r} has no '=': write KEY=value")
        _check_env_name(key, f"line {number}: ")
        if key in env:
            raise ValueError(f"{key} is set twice (lines {where[key]} and {number}): keep one")
        env[key], where[key] = _env_value(value.strip()), number
    return env


def _check_env_name(key: str, prefix: str = "") -> None:
    if not _ENV_NAME.fullmatch(key):
        raise ValueError(
            f"{prefix}{key!r} is not a valid variable name: use letters, digits and '_', "
            "not starting with a digit"
        )


def _parse_env(value: Any) -> Any:
    """KEY=value pairs from a mapping, a list of "KEY=value" strings, or a text of KEY=value lines."""
    if value is None:
        return {}
    if isinstance(value, str):
        return _parse_env_lines(value.splitlines())
    if isinstance(value, list):
        return _parse_env_lines(value)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"env is {_show(value)}: use a mapping {{KEY: value}}, a list of 'KEY=value' or KEY=value lines"
        )
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"variable name {_show(key)} is not a string")
        _check_env_name(key)
        # Kubernetes takes only string values; an int has one spelling, but YAML turns yes/1.10/null
        # into values whose text the user did not write, so those must be quoted.
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise ValueError(f'{key} is {_show(item)}, not a string: quote it ({key}: "...")')
        env[key] = item
    return env


# --- the document --------------------------------------------------------------------------------

Cpu = Annotated[float, BeforeValidator(_parse_cpu), Field(gt=0), PlainSerializer(_cpu_out)]
Memory = Annotated[int, BeforeValidator(_parse_memory), Field(gt=0), PlainSerializer(format_quantity)]
Env = Annotated[dict[str, str], BeforeValidator(_parse_env)]


_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class Metadata(_Model):
    name: str
    description: str = Field("", max_length=1000)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) <= 63 and _NAME.fullmatch(name):
            return name
        suggestion = (
            re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-").lstrip("0123456789-")[:63].rstrip("-")
        )
        hint = f" (e.g. {suggestion!r})" if suggestion else ""
        raise ValueError(
            f"{name!r} is not a valid service name: use 1-63 lowercase letters, digits and '-', starting "
            f"with a letter and ending with a letter or digit{hint}"
        )


_RELEASE = re.compile(r"[0-9][A-Za-z0-9_.+-]{0,62}")


class Engine(_Model):
    name: Literal["builtin", "vllm", "sglang"] = "builtin"
    version: str = ""  # a release of the engine (0.33.0); empty: the one its adapter targets

    @field_validator("version")
    @classmethod
    def _release(cls, version: str) -> str:
        # It becomes an image tag on Kubernetes (v0.33.0): a leading v is accepted and dropped.
        bare = version.strip().removeprefix("v")
        if bare and not _RELEASE.fullmatch(bare):
            raise ValueError(
                f"{version!r} is not a release: write it as the engine numbers it (e.g. '0.33.0'), "
                "or leave it empty for the release tideserve targets"
            )
        return bare


class Resources(_Model):
    """Per instance. A multiNode instance takes an equal share of each on every one of its nodes."""

    cpu: Cpu = 1.0
    memory: Memory = 2 * 2**30
    gpus: int = Field(0, ge=0)


class Deployment(_Model):
    mode: Literal["single", "multiNode", "pdDisaggregated"] = "single"
    nodes_per_instance: int | None = Field(None, ge=2)
    # Per service replica: one replica of a pdDisaggregated service is this many prefill plus this
    # many decode instances.
    prefill_replicas: int | None = Field(None, ge=1)
    decode_replicas: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _mode_fields(self) -> Deployment:
        problems = []
        if self.mode == "multiNode" and self.nodes_per_instance is None:
            problems.append(
                (
                    "nodesPerInstance",
                    "is required when mode is multiNode: set the machines one instance spans (≥ 2)",
                )
            )
        if self.mode != "multiNode" and self.nodes_per_instance is not None:
            problems.append(
                ("nodesPerInstance", f"applies only to mode multiNode (mode is {self.mode}): remove it")
            )
        for field in ("prefill_replicas", "decode_replicas"):
            if self.mode != "pdDisaggregated" and getattr(self, field) is not None:
                problems.append(
                    (
                        to_camel(field),
                        f"applies only to mode pdDisaggregated (mode is {self.mode}): remove it",
                    )
                )
        if problems:
            raise _Violations(problems)
        if self.mode == "pdDisaggregated":
            # Filled in here rather than left unset so the printed spec shows what runs.
            self.prefill_replicas = self.prefill_replicas or 1
            self.decode_replicas = self.decode_replicas or 1
        return self

    @property
    def nodes(self) -> int:
        return self.nodes_per_instance or 1


class Access(_Model):
    service_port: int = Field(8080, ge=1, le=65535)
    target_port: int = Field(60000, ge=60000, le=65535)
    exposure: Literal["internal", "external"] = "internal"


class Parameters(_Model):
    tp_size: int = Field(1, ge=1)
    pp_size: int = Field(1, ge=1)
    dp_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=MIN_MAX_MODEL_LEN)  # None until apply_defaults
    max_batch_size: int = Field(32, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)  # None until apply_defaults

    @model_validator(mode="after")
    def _batch_budget(self) -> Parameters:
        # We always chunk prefills, so (as in vLLM) the only floor is one decode token per running sequence.
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_batch_size:
            raise _Violations(
                [
                    (
                        "maxNumBatchedTokens",
                        f"maxNumBatchedTokens={self.max_num_batched_tokens} is below "
                        f"maxBatchSize={self.max_batch_size}: a step must fit one token per running "
                        f"sequence; raise it to ≥ {self.max_batch_size} or lower maxBatchSize",
                    )
                ]
            )
        return self


class Canary(_Model):
    """Keep an earlier revision serving beside the current one and split traffic by weight: the
    current revision gets `weight` percent, `stableRevision` the rest. Remove the block to promote
    the current revision; apply the stable revision's spec again to roll back."""

    stable_revision: int = Field(ge=1)
    stable_replicas: int = Field(1, ge=1, le=64)
    weight: int = Field(ge=0, le=100)


class PromptLengthPools(_Model):
    """Long prompts go to their own instances so they never hold up short ones (head-of-line blocking
    in a shared batch): prompts of at least `thresholdTokens` go to `longReplicas` instances, the rest
    to the others. A pool with no instance able to take a request falls back to the other pool."""

    threshold_tokens: int = Field(ge=1)
    long_replicas: int = Field(1, ge=1)


class RateLimit(_Model):
    """Per service, shared by every key; a key's own limits apply as well."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)


class Queue(_Model):
    """Requests no instance can take yet (none ready, all saturated or failing) wait here, high
    priority first, then 503 with Retry-After."""

    max_size: int = Field(256, ge=0)
    timeout_seconds: float = Field(30.0, ge=0, le=3600)


class Routing(_Model):
    policy: Literal["round_robin", "least_requests", "least_kv", "prefix_aware", "session"] = "prefix_aware"
    canary: Canary | None = None
    prompt_length: PromptLengthPools | None = None
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    queue: Queue = Field(default_factory=Queue)
    # Requests one instance holds at once, from this gateway; the rest queue here by priority. Unset:
    # twice maxBatchSize (a running batch plus one waiting in the engine).
    max_inflight_per_instance: int | None = Field(None, ge=1)
    request_timeout_seconds: float = Field(600.0, gt=0, le=86400)


class SpecBody(_Model):
    model: str = Field(min_length=1)
    cluster: str = Field("local", min_length=1)
    resource_group: str = Field("default", min_length=1)
    engine: Engine = Field(default_factory=Engine)
    replicas: int = Field(1, ge=0, le=64)
    resources: Resources = Field(default_factory=Resources)
    deployment: Deployment = Field(default_factory=Deployment)
    access: Access = Field(default_factory=Access)
    env: Env = Field(default_factory=dict)
    parameters: Parameters = Field(default_factory=Parameters)
    routing: Routing = Field(default_factory=Routing)
    autoscaling: AutoscalingSpec | None = None  # absent: `replicas` stays as set

    @model_validator(mode="after")
    def _shards_match_gpus(self) -> SpecBody:
        gpus, p, nodes = self.resources.gpus, self.parameters, self.deployment.nodes
        problems = []
        shards = p.tp_size * p.pp_size * p.dp_size
        if gpus == 0 and shards != 1:
            field = next(
                f for f, v in (("tpSize", p.tp_size), ("ppSize", p.pp_size), ("dpSize", p.dp_size)) if v != 1
            )
            problems.append(
                (
                    f"parameters.{field}",
                    f"a CPU instance (resources.gpus=0) runs unsharded but tpSize={p.tp_size}, "
                    f"ppSize={p.pp_size}, dpSize={p.dp_size}: set them to 1, or give the instance GPUs",
                )
            )
        if gpus > 0 and shards != gpus:
            # dpSize engine replicas inside one instance (vLLM, SGLang) each hold a tp × pp model copy.
            problems.append(
                (
                    "parameters.tpSize",
                    f"tpSize × ppSize × dpSize = {p.tp_size} × {p.pp_size} × {p.dp_size} = {shards} but "
                    f"resources.gpus={gpus}: each GPU of an instance holds one shard of one data-parallel "
                    f"replica; set tpSize × ppSize × dpSize to {gpus}, or set gpus to {shards}",
                )
            )
        if self.deployment.mode == "multiNode" and (gpus == 0 or gpus % nodes):
            problems.append(
                (
                    "resources.gpus",
                    f"a multiNode instance splits its GPUs evenly over its {nodes} nodes but "
                    f"resources.gpus={gpus}: set gpus to a multiple of nodesPerInstance "
                    f"({nodes}, {2 * nodes}, ...)",
                )
            )
        pools = self.routing.prompt_length
        if pools is not None and self.replicas > 0 and pools.long_replicas >= self.replicas:
            problems.append(
                (
                    "routing.promptLength.longReplicas",
                    f"longReplicas={pools.long_replicas} leaves no instance of {self.replicas} for short "
                    f"prompts: set it below replicas, or raise replicas to ≥ {pools.long_replicas + 1}",
                )
            )
        if problems:
            raise _Violations(problems)
        return self


class ServiceSpec(_Model):
    """The whole service document."""

    api_version: Literal["tideserve/v1"] = API_VERSION
    kind: Literal["Service"] = KIND
    metadata: Metadata
    spec: SpecBody


# --- parsing -------------------------------------------------------------------------------------

_DOCUMENT_KEYS = {"apiVersion", "api_version", "kind", "metadata", "spec"}
_REQUIRED_HINTS = {
    "metadata": "add metadata: {name: ...}",
    "metadata.name": "name the service with a DNS label such as 'chat-small'",
    "spec": "add spec: {model: ...}",
    "spec.model": "set a model plaza card name or a registered custom model",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of duplicate keys without a word; two `replicas:` lines are a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _load_text(text: str) -> Any:
    # JSON first when it looks like JSON: its errors point at the right place, and PyYAML trips on the
    # tab indentation JSON allows.
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError as e:
            raise SpecError(
                [{"loc": "", "msg": f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"}]
            ) from e
        except ValueError as e:
            raise SpecError([{"loc": "", "msg": f"malformed JSON: {e}"}]) from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = " ".join(part for part in (e.context, e.problem) if part)
        raise SpecError([{"loc": "", "msg": f"malformed YAML{where}: {what}"}]) from e
    except yaml.YAMLError as e:
        raise SpecError([{"loc": "", "msg": f"malformed YAML: {e}"}]) from e


def _as_document(data: Mapping[str, Any]) -> dict[str, Any]:
    if _DOCUMENT_KEYS & data.keys():
        return dict(data)
    body = dict(data)
    metadata = {key: body.pop(key) for key in ("name", "description") if key in body}
    return {"metadata": metadata, "spec": body}


def parse_service_document(source: str | bytes | Mapping[str, Any]) -> ServiceSpec:
    """A ServiceSpec from YAML or JSON text, or from an already-parsed mapping, in the document form
    or the flat form (see the module docstring). Raises SpecError listing every problem found."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError([{"loc": "", "msg": f"the document is not UTF-8 text: {e}"}]) from e
    data = _load_text(source) if isinstance(source, str) else source
    if data is None:
        raise SpecError([{"loc": "", "msg": "the document is empty: write metadata (name) and spec (model)"}])
    if not isinstance(data, Mapping):
        raise SpecError(
            [
                {
                    "loc": "",
                    "msg": f"the document is {_show(data)}: write a mapping with metadata "
                    "(name, description) and spec (model, resources, ...)",
                }
            ]
        )
    try:
        return ServiceSpec.model_validate(_as_document(data))
    except ValidationError as e:
        raise SpecError(_field_errors(e)) from e


def _field_errors(error: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, _Violations):
            out += [{"loc": f"{loc}.{sub}" if loc else sub, "msg": msg} for sub, msg in cause.items]
        else:
            out.append({"loc": loc, "msg": _message(item, loc)})
    return out


def _message(item: Any, loc: str) -> str:
    kind, ctx, got = item["type"], item.get("ctx", {}), item.get("input")
    if kind == "missing":
        hint = _REQUIRED_HINTS.get(loc)
        if hint is None and loc.startswith("spec.autoscaling."):
            hint = required_hint(loc.rsplit(".", 1)[-1])
        return f"is required: {hint}" if hint else "is required"
    if kind == "extra_forbidden":
        return _unknown_field(item["loc"])
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {_show(got)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_show(got)}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_type":
        return f"must be text, got {_show(got)}: quote it (YAML reads yes/no/on/off, numbers and null)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, got {len(got)}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {_show(got)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields, got {_show(got)}"
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}, got {_show(got)}"
    return str(item["msg"])


def _unknown_field(loc: tuple[Any, ...]) -> str:
    name = str(loc[-1])
    model = _model_at(loc[:-1])
    known = [f.alias or n for n, f in model.model_fields.items()] if model else []
    where = ".".join(str(p) for p in loc[:-1]) or "the document"
    msg = f"unknown field {name!r} in {where}"
    if loc[:-1] == () and name in ("name", "description"):
        return f"{msg}: in the document form it goes under metadata.{name}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{msg}: did you mean {close[0]!r}?"
    return f"{msg}: remove it (known fields: {', '.join(known)})"


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    return model_at(ServiceSpec, path)


def _show(value: Any) -> str:
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


# --- output --------------------------------------------------------------------------------------


def to_document(spec: ServiceSpec) -> dict[str, Any]:
    """The document form as plain JSON-able data, camelCase, every set field present."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # A multi-line description reads (and edits) better as a block than as one escaped line.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(spec: ServiceSpec) -> str:
    return yaml.dump(to_document(spec), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


# --- decisions -----------------------------------------------------------------------------------


def apply_defaults(spec: ServiceSpec, model_max_context: int | None) -> ServiceSpec:
    """Fill the parameters whose defaults depend on the model, and bound maxModelLen by it.

    maxNumBatchedTokens defaults to max(2048, maxBatchSize): vLLM's chunked-prefill budget, raised when
    needed so one step can always carry a decode token for every running sequence."""
    p = spec.spec.parameters
    model = spec.spec.model
    if model_max_context is not None and p.max_model_len is not None and p.max_model_len > model_max_context:
        raise SpecError(
            [
                {
                    "loc": "spec.parameters.maxModelLen",
                    "msg": f"maxModelLen={p.max_model_len} exceeds the {model_max_context}-token context "
                    f"of model {model!r}: set maxModelLen ≤ {model_max_context}, or leave it unset",
                }
            ]
        )
    max_model_len = p.max_model_len
    if max_model_len is None:
        max_model_len = min(DEFAULT_MAX_MODEL_LEN, model_max_context or DEFAULT_MAX_MODEL_LEN)
        if max_model_len < MIN_MAX_MODEL_LEN:
            raise SpecError(
                [
                    {
                        "loc": "spec.model",
                        "msg": f"model {model!r} has a {max_model_len}-token context, below the "
                        f"{MIN_MAX_MODEL_LEN} tokens a service must serve: "
                        "pick a model with a longer context",
                    }
                ]
            )
    batched = p.max_num_batched_tokens or max(DEFAULT_MAX_NUM_BATCHED_TOKENS, p.max_batch_size)
    parameters = p.model_copy(update={"max_model_len": max_model_len, "max_num_batched_tokens": batched})
    return spec.model_copy(update={"spec": spec.spec.model_copy(update={"parameters": parameters})})


def validate_against_hardware(
    spec: ServiceSpec,
    node_gpu_counts: list[int],
    node_cpus: list[float],
    node_memory_bytes: list[int],
) -> list[FieldError]:
    """Problems that make an instance unplaceable in a resource group whatever else runs there: one
    instance (or, for multiNode, its share on each of nodesPerInstance nodes) must fit a node."""
    body = spec.spec
    group = body.resource_group
    nodes = body.deployment.nodes
    if not node_cpus:
        return [
            {
                "loc": "spec.resourceGroup",
                "msg": f"resource group {group!r} has no nodes: add a node to it, or pick another group",
            }
        ]
    if len(node_cpus) < nodes:
        return [
            {
                "loc": "spec.deployment.nodesPerInstance",
                "msg": f"deployment.nodesPerInstance={nodes} but resource group {group!r} has "
                f"{len(node_cpus)} node(s): lower nodesPerInstance or add nodes",
            }
        ]
    res = body.resources
    checks = [
        ("gpus", res.gpus, res.gpus // nodes, node_gpu_counts, "GPUs"),
        ("cpu", res.cpu, res.cpu / nodes, node_cpus, "CPUs"),
        ("memory", res.memory, res.memory // nodes, node_memory_bytes, "memory"),
    ]
    errors: list[FieldError] = []
    for field, total, per_node, capacities, more in checks:
        # The nodes-th largest node is the smallest that an instance spanning that many nodes would use.
        capacity = sorted(capacities, reverse=True)[nodes - 1]
        if per_node <= capacity:
            continue
        if nodes == 1:
            msg = (
                f"resources.{field}={_number(field, total)} but the largest node in resource group {group!r} "
                f"has {_amount(field, capacity)}: lower {field} or add a node with more {more}"
            )
        else:
            enough = sum(1 for c in capacities if c >= per_node)
            msg = (
                f"resources.{field}={_number(field, total)} over nodesPerInstance={nodes} needs "
                f"{_amount(field, per_node)} on each of {nodes} nodes, but resource group {group!r} has "
                f"{enough} such node(s): lower {field} or add nodes with more {more}"
            )
        errors.append({"loc": f"spec.resources.{field}", "msg": msg})
    return errors


def _number(field: str, value: float) -> str:
    return format_quantity(int(value)) if field == "memory" else f"{value:g}"


def _amount(field: str, value: float) -> str:
    if field == "memory":
        return f"{format_quantity(int(value))} of memory"
    unit = "GPU" if field == "gpus" else "CPU"
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


_IMMUTABLE = (
    "metadata.name",
    "spec.engine.name",
    "spec.deployment.mode",
    "spec.deployment.nodesPerInstance",
)


def _at(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def immutable_changes(old: ServiceSpec, new: ServiceSpec) -> list[str]:
    """Dotted paths of the fields fixed at creation that differ between `old` and `new`."""
    before, after = to_document(old), to_document(new)
    return [path for path in _IMMUTABLE if _at(before, path) != _at(after, path)]


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def immutable_errors(old: ServiceSpec, new: ServiceSpec) -> list[FieldError]:
    """immutable_changes as API errors, with both values and the way out."""
    before, after = to_document(old), to_document(new)
    return [
        {
            "loc": path,
            "msg": f"{path} cannot change after creation (was {_shown(_at(before, path))}, "
            f"got {_shown(_at(after, path))}): create a new service instead",
        }
        for path in immutable_changes(old, new)
    ]


def revision_hash(spec: ServiceSpec) -> str:
    """A short stable hash of what an instance is made from: equal hashes mean running instances can
    stay. Replica counts, description, servicePort and exposure live outside the instances, so
    scaling or re-exposing a service does not roll it. Hash after apply_defaults."""
    body = to_document(spec)["spec"]
    deployment = {
        k: v for k, v in body["deployment"].items() if k not in ("prefillReplicas", "decodeReplicas")
    }
    identity = {
        "model": body["model"],
        # Moving to another cluster or group means new instances there.
        "cluster": body["cluster"],
        "resourceGroup": body["resourceGroup"],
        "engine": body["engine"],
        "resources": body["resources"],
        "deployment": deployment,
        "targetPort": body["access"]["targetPort"],
        "env": body["env"],
        "parameters": body["parameters"],
    }
    # None-valued fields are already dropped, so a new optional field added later leaves the hash of
    # existing services (and so their instances) alone.
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
