"""Prompts shared by the HTTP load generator and in-process peers (no dependencies beyond the stdlib)."""

from __future__ import annotations

import random

# Common English words, each one token with its leading space in SmolLM2's tokenizer.
_WORD_TEXT = """
time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community
name president team minute idea kid body information back parent face others level office door health
person art war history party result change morning reason research girl guy moment air teacher force
education river garden market bridge window summer winter music paper light stone field green quiet
"""
_WORDS = _WORD_TEXT.split()
PROMPT_WORDS = 80  # ~100 prompt tokens with the framing text


def make_prompt(key: str, words: int = PROMPT_WORDS) -> str:
    """A prompt whose first tokens differ per key, so a prefix cache cannot reuse another request's work."""
    rng = random.Random(key)
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"{body}\n\nWrite a long story that uses all of the words above, in order."
