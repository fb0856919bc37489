"""T5 text encoder used by GenerateCT's MaskGIT and super-resolution stages.

The reference encodes prompts with ``google/t5-v1_1-base``: the T5 tokenizer with
``padding='longest', max_length=256, truncation=True``, ``T5EncoderModel(...).last_hidden_state`` in
float32, padding positions zero-filled, and the text mask ``any(embeds != 0, -1)``. This module does the
same without module globals, hidden device moves or hub access at import time: the model loads when
:meth:`T5TextEncoder.from_pretrained` is called, from a hub id or a local folder in Hugging Face format.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

DEFAULT_T5_NAME = "google/t5-v1_1-base"
MAX_TEXT_LENGTH = 256


@dataclasses.dataclass
class TextEmbeddings:
    """Encoded prompts.

    Attributes:
        embeds: ``(b, L, d_model)`` float, zero at padding positions.
        mask: ``(b, L)`` bool, True at real tokens.
        token_ids: ``(b, L)`` long, the tokenizer's ids (for attention maps).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    token_ids: torch.Tensor


class T5TextEncoder:
    """A T5 encoder and its tokenizer, loaded from ``name_or_path`` (hub id or local folder)."""

    def __init__(self, model, tokenizer, *, name: str, max_length: int = MAX_TEXT_LENGTH):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_T5_NAME,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
        max_length: int = MAX_TEXT_LENGTH,
    ) -> T5TextEncoder:
        """Load the encoder weights and tokenizer.

        Args:
            name_or_path: a Hugging Face hub id (downloaded into the user's cache) or a local folder
                holding ``config.json``, the weights and the tokenizer files.
            device, dtype: where the encoder runs. Embeddings are returned in float32 regardless.
            local_files_only: never contact the hub (air-gapped machines).
            max_length: truncation length in tokens (256 in the reference).
        """
        from transformers import AutoTokenizer, T5EncoderModel

        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        source = str(name_or_path)
        if Path(source).exists() and not Path(source, "config.json").is_file():
            raise ValueError(f"text encoder folder {source!r} has no config.json (Hugging Face format)")
        from transformers.utils import logging as hf_logging

        bars_were_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # progress belongs to our callback, not to stderr
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            model = T5EncoderModel.from_pretrained(source, local_files_only=local_files_only)
        except OSError as exc:
            raise ValueError(
                f"cannot load the T5 text encoder {source!r}: {exc}. Pass a local folder in Hugging Face "
                "format, or allow hub access to download it."
            ) from exc
        finally:
            if bars_were_enabled:
                hf_logging.enable_progress_bar()
        model.eval().requires_grad_(False)
        model.to(device=device, dtype=dtype)
        return cls(model, tokenizer, name=source, max_length=max_length)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> TextEmbeddings:
        """Encode one prompt or a batch, padded to the longest and truncated to ``max_length``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        encoded = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding="longest",
            max_length=self.max_length,
            truncation=True,
        )
        token_ids = encoded.input_ids.to(self.device)
        attention_mask = encoded.attention_mask.to(self.device).bool()
        hidden = self.model(input_ids=token_ids, attention_mask=attention_mask).last_hidden_state
        embeds = hidden.float().masked_fill(~attention_mask[..., None], 0.0)
        # the reference derives the mask from the zero-filled embeddings
        mask = (embeds != 0).any(dim=-1)
        return TextEmbeddings(embeds=embeds, mask=mask, token_ids=token_ids)

    def tokens(self, token_ids: torch.Tensor) -> list[str]:
        """The token strings of one row of ``token_ids`` (for attention-map labels)."""
        return self.tokenizer.convert_ids_to_tokens(token_ids.tolist())


def build_word_tokenizer(words: list[str], *, max_length: int = MAX_TEXT_LENGTH):
    """A word-level T5-style tokenizer (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then ``words``).

    Used for small bundles whose text encoder is trained on a closed report vocabulary; it is saved and
    loaded in Hugging Face format like the real T5 tokenizer. Words are split on whitespace and
    punctuation; every sequence ends with ``</s>`` as T5's does.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab: dict[str, int] = {}
    for token in specials + list(words):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
