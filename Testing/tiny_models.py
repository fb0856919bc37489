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
    from transformers import T5Config, T5EncoderModel

    from GenerateCTLib.text_encoder import build_word_tokenizer

    fast = build_word_tokenizer([str(n) for n in range(121)] + TINY_VOCAB)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(fast),
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


def make_tiny_bundle(directory: Path, *, seed: int = 0) -> Path:
    """A random three-stage bundle at toy size (9×32×32 low-res, 9×128×128 after SR) with a tiny T5."""
    import tempfile

    import torch

    from GenerateCTLib.checkpoints import write_bundle
    from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
    from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
    from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

    torch.manual_seed(seed)
    d_text = 32
    models = {
        "ctvit": CTViT(CTViTConfig(dim=32, codebook_size=32, image_size=32, patch_size=8, temporal_patch_size=2,
                                   spatial_depth=1, temporal_depth=1, dim_head=8, heads=2)),
        "maskgit": MaskGIT(MaskGITConfig(num_tokens=32, max_seq_len=256, dim=32, dim_context=d_text, depth=1,
                                         heads=2, dim_head=8)),
        "super_resolution": SuperResolutionUnet(SuperResolutionUnetConfig(
            dim=8, cond_dim=8, text_embed_dim=d_text, max_text_len=16, attn_heads=2, attn_dim_head=8,
            attn_pool_num_latents=4, mid_attn_heads=2, mid_attn_dim_head=8)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t5 = make_tiny_t5(Path(tmp) / "t5", d_model=d_text, seed=seed)
        return write_bundle(directory, models, name="tiny-random", version="0", source="random init (tests)",
                            text_encoder=t5)
