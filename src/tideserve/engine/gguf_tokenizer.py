"""Rebuild a Hugging Face tokenizer from the vocabulary a GGUF file carries.

A GGUF has no tokenizer.json: llama.cpp's converter stores the vocabulary, the merges, each token's
type and the special token ids as metadata, and names the pre-tokenizer the merges were learned with
(`tokenizer.ggml.pre`). We put those back together into a `tokenizers.Tokenizer` that splits text
the way the model's own tokenizer.json does, so ids match what the model was trained on.
"""

from __future__ import annotations

import logging
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

log = logging.getLogger(__name__)

Key = gguf.Keys.Tokenizer

# The split regexes from the models' own tokenizer.json files. They differ from GPT-2's in how they
# group digits (runs of up to three for Llama 3, one at a time for Qwen2) and attach punctuation.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMES = frozenset({"llama3", "llama-v3", "llama-bpe"})
_QWEN2_NAMES = frozenset({"qwen2", "deepseek-r1-qwen"})


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> tuple[Tokenizer, dict[str, Any]]:
    """The file's tokenizer, and a tokenizer_config.json-shaped dict (chat template, special tokens)."""
    kind = _scalar(reader, Key.MODEL)
    if kind == "llama":
        raise ValueError(
            "this GGUF carries a SentencePiece vocabulary (tokenizer.ggml.model = 'llama'), which the "
            "built-in engine cannot rebuild faithfully from GGUF metadata; point the engine at the "
            "model's Hugging Face directory (the one with tokenizer.json) instead"
        )
    if kind != "gpt2":
        raise ValueError(
            f"unsupported GGUF tokenizer model {kind!r}; only byte-level BPE ('gpt2') is supported"
        )

    tokens: list[str] = _array(reader, Key.LIST)
    token_types: list[int] = _array(reader, Key.TOKEN_TYPE) or [gguf.TokenType.NORMAL] * len(tokens)
    # Merges are "left right"; byte-level tokens never contain a real space, so one split is exact.
    merges = [tuple(merge.split(" ", 1)) for merge in _array(reader, Key.MERGES)]
    pre = _scalar(reader, Key.PRE) or "default"

    # Duplicated spellings keep their first id, as llama.cpp's own text-to-token lookup does.
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            fuse_unk=False,
            byte_fallback=False,
            # Llama 3 looks a whole pre-token up before merging (its tokenizer.json sets this too).
            ignore_merges=pre in _LLAMA3_NAMES,
        )
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    if pre in _QWEN2_NAMES:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>) and user-defined ones (<think>) are matched whole before
    # pre-tokenization, as llama.cpp does. Only control tokens are special: user-defined ones are
    # real output text that skip_special_tokens must keep.
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, token_type in zip(tokens, token_types, strict=True)
            if token_type == gguf.TokenType.CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token, token_type in zip(tokens, token_types, strict=True)
            if token_type == gguf.TokenType.USER_DEFINED
        ]
    )

    def token_at(key: str) -> str | None:
        index = _scalar(reader, key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    add_bos = _scalar(reader, Key.ADD_BOS)
    config: dict[str, Any] = {
        "chat_template": _chat_template(reader),
        "bos_token": token_at(Key.BOS_ID),
        "eos_token": token_at(Key.EOS_ID),
        "pad_token": token_at(Key.PAD_ID),
        "unk_token": token_at(Key.UNK_ID),
        # Without the flag llama.cpp adds BOS only for Llama 3's vocabulary; follow it.
        "add_bos_token": bool(add_bos) if add_bos is not None else pre in _LLAMA3_NAMES,
    }
    return tokenizer, config


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre == "smollm":
        # SmolLM's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    split = _LLAMA3_SPLIT if pre in _LLAMA3_NAMES else _QWEN2_SPLIT if pre in _QWEN2_NAMES else None
    if split is not None:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre not in ("gpt2", "default"):
        log.warning(
            "unknown GGUF pre-tokenizer %r; splitting like GPT-2, ids may differ from the model's", pre
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _chat_template(reader: gguf.GGUFReader) -> str | list[dict[str, str]] | None:
    """The default template, or HF's list form when the file also names others (e.g. tool_use)."""
    default = _scalar(reader, Key.CHAT_TEMPLATE)
    names: list[str] = _array(reader, Key.CHAT_TEMPLATES)
    named = [
        {"name": name, "template": template}
        for name in names
        if (template := _scalar(reader, Key.CHAT_TEMPLATE_N.format(name=name))) is not None
    ]
    if not named:
        return default
    if default is not None:
        named.insert(0, {"name": "default", "template": default})
    return named


def _scalar(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _array(reader: gguf.GGUFReader, key: str) -> list[Any]:
    # contents() slices the string parts straight out of the memory map; no per-element parsing.
    field = reader.fields.get(key)
    return field.contents() if field is not None else []
