"""The engine's tokenizer: text to ids and back, the model's chat template, and streaming detokenization.

Wraps a Hugging Face `tokenizers.Tokenizer` (from a tokenizer.json, or rebuilt from a GGUF by
gguf_tokenizer) and the bits of tokenizer_config.json / generation_config.json the engine needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import tokenizers
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers.decoders import DecodeStream


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered: no template, the template refused it, or it failed."""


class _TemplateEnvironment(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox renders a forbidden attribute as an empty string, which would hide an
        # escape attempt inside an odd-looking prompt; refuse it loudly instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes <, > and &, which would change tool schemas in the prompt;
    # templates are written against transformers' version, which does not.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# The same environment transformers renders chat templates with, so templates behave identically.
_TEMPLATES = _TemplateEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
_TEMPLATES.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
_TEMPLATES.filters["tojson"] = _tojson


class IncrementalDetokenizer:
    """Streams one sequence's text: each step gives only the new text, never half a character.

    Bytes of a character split across tokens are held until it completes, so the steps concatenated
    equal decoding the whole sequence at once, except that a character still incomplete when the
    sequence stops is never emitted (decode would show it as U+FFFD). Each step decodes only a
    short window of recent tokens, so its cost does not grow with the sequence.
    """

    __slots__ = ("_stream", "_tokenizer")

    def __init__(self, tokenizer: tokenizers.Tokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._tokenizer, token_id) or ""


class Tokenizer:
    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        chat_templates: Mapping[str, str],
        bos_token: str | None,
        eos_token: str | None,
        eos_token_ids: tuple[int, ...],
        add_bos_token: bool,
    ) -> None:
        self._tokenizer = tokenizer
        self._chat_templates = dict(chat_templates)
        self._compiled: dict[str, jinja2.Template] = {}
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._bos_token_id = tokenizer.token_to_id(bos_token) if bos_token is not None else None
        self._eos_token_ids = eos_token_ids
        # Empty unless BOS is added: encode's check is then a list compare, no None handling.
        self._bos_prefix = [self._bos_token_id] if add_bos_token and self._bos_token_id is not None else []

    @classmethod
    def from_dir(cls, path: Path) -> Tokenizer:
        """Load a Hugging Face model directory: tokenizer.json plus the configs that sit beside it."""
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found; the built-in engine needs a tokenizer.json "
                "(a SentencePiece tokenizer.model alone is not supported)"
            )
        config = _read_json(path / "tokenizer_config.json")
        # Newer transformers saves the template in its own file instead of tokenizer_config.json.
        template_file = path / "chat_template.jinja"
        if template_file.is_file():
            config["chat_template"] = template_file.read_text(encoding="utf-8")
        # Chat models often stop on more than their tokenizer's eos_token (e.g. <|eot_id|> and
        # <|end_of_text|>); generation_config.json lists them all.
        generation_eos = _read_json(path / "generation_config.json").get("eos_token_id")
        if isinstance(generation_eos, int):
            generation_eos = [generation_eos]
        return cls.from_tokenizer(
            tokenizers.Tokenizer.from_file(str(tokenizer_file)),
            config,
            extra_eos_token_ids=generation_eos or (),
        )

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: tokenizers.Tokenizer,
        config: Mapping[str, Any],
        extra_eos_token_ids: Iterable[int] = (),
    ) -> Tokenizer:
        """Wrap a tokenizer with a tokenizer_config.json-shaped dict."""
        bos_token = _token_content(config.get("bos_token"))
        eos_token = _token_content(config.get("eos_token"))
        eos_ids = [tokenizer.token_to_id(eos_token)] if eos_token is not None else []
        eos_ids.extend(extra_eos_token_ids)

        add_bos_token = config.get("add_bos_token")
        if add_bos_token is None:
            # No flag: the tokenizer.json's post-processor decides, as it does in transformers
            # (Llama 3 adds BOS there). Ask it once rather than running it on every encode.
            bos_id = tokenizer.token_to_id(bos_token) if bos_token is not None else None
            add_bos_token = bos_id is not None and tokenizer.encode("").ids[:1] == [bos_id]

        return cls(
            tokenizer,
            chat_templates=_chat_templates(config.get("chat_template")),
            bos_token=bos_token,
            eos_token=eos_token,
            eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
            add_bos_token=bool(add_bos_token),
        )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_token_ids

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def add_bos_token(self) -> bool:
        return bool(self._bos_prefix)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # The post-processor stays off: BOS is the only thing we add, and only once, so a prompt
        # whose chat template already wrote it does not get two.
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self._bos_prefix and ids[:1] != self._bos_prefix:
            ids = self._bos_prefix + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self._tokenizer, skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render the conversation with the model's own template, as transformers would."""
        template = self._template(tools is not None)
        context: dict[str, Any] = {}
        if self._bos_token is not None:
            context["bos_token"] = self._bos_token
        if self._eos_token is not None:
            context["eos_token"] = self._eos_token
        context.update(extra)
        context.update(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)
        try:
            return template.render(context)
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

    def _template(self, tools_given: bool) -> jinja2.Template:
        # A model with a separate tool-calling template (HF's named-template list) uses it for tools.
        name = "tool_use" if tools_given and "tool_use" in self._chat_templates else "default"
        compiled = self._compiled.get(name)
        if compiled is not None:
            return compiled
        source = self._chat_templates.get(name)
        if source is None:
            raise ChatTemplateError(
                "this model has no chat template; use the completions API or give the model a chat template"
            )
        try:
            compiled = self._compiled[name] = _TEMPLATES.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
        return compiled


def _chat_templates(value: Any) -> dict[str, str]:
    """tokenizer_config.json's chat_template: one template, or a list of named ones."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    return {entry["name"]: entry["template"] for entry in value}


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)
