"""Small randomly initialised T5 encoders for demo bundles, saved in Hugging Face format.

The folder written by :func:`build_text_encoder` loads through ``T5TextEncoder.from_pretrained(folder)``
exactly like ``google/t5-v1_1-base`` (``T5EncoderModel`` + a word-level tokenizer from
:func:`GenerateCTLib.text_encoder.build_word_tokenizer`). Random T5 features are enough for a closed report
vocabulary: MaskGIT's cross-attention and the SR Unet's text projection learn to read them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from GenerateCTLib.text_encoder import build_word_tokenizer

# the split of the word tokenizer's ``Whitespace`` pre-tokenizer
_WORD = re.compile(r"\w+|[^\w\s]+")


def vocabulary_from_texts(texts: Iterable[str]) -> list[str]:
    """The distinct words (and punctuation runs) of ``texts`` in first-seen order, as the word tokenizer
    splits them; ages 0-120 are always included so every prompt age has its own token."""
    words: dict[str, None] = {str(age): None for age in range(121)}
    for text in texts:
        for word in _WORD.findall(text):
            words.setdefault(word, None)
    return list(words)


def build_text_encoder(
    words: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    d_ff: int | None = None,
) -> Path:
    """Write a random T5 encoder (gated-GELU, like T5 v1.1) and a word tokenizer over ``words`` to ``out_dir``.

    Args:
        words: the vocabulary (e.g. :func:`vocabulary_from_texts` of the training prompts).
        d_model / layers / heads: encoder width, depth and heads (``d_kv = d_model // heads``).
        seed: initialisation seed (same seed and words give the same weights).
        d_ff: feed-forward width (default ``2 · d_model``).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    for name, value in (("d_model", d_model), ("layers", layers), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; allowed: a positive int")
    if d_model % heads:
        raise ValueError(f"d_model={d_model} is invalid; allowed: a multiple of heads={heads}")
    if not words:
        raise ValueError("words=[] is invalid; allowed: a non-empty vocabulary")
    tokenizer = build_word_tokenizer(list(words))
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=d_ff or 2 * d_model,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    # fork the RNG so building an encoder does not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no stray "Writing model shards" bars on stderr
    try:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    return out_dir
