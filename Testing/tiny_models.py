"""Tiny, locally built stand-ins for the hub downloads the tests cannot make (T5 encoder + tokenizer)."""

from __future__ import annotations

from pathlib import Path

TINY_VOCAB = (
    "years old male female : no acute cardiopulmonary findings . , and cardiomegaly pleural effusion "
    "left right bilateral nodule consolidation emphysema atelectasis lymphadenopathy pericardial "
    "mild moderate severe small large lung lobe upper lower"
).split()


def make_tiny_t5(directory: Path, *, d_model: int = 32, seed: int = 0) -> Path:
    """Write a 2-layer T5 encoder and a word-level tokenizer in Hugging Face format to ``directory``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [str(n) for n in range(121)] + TINY_VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5EncoderModel(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory
