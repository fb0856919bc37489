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


def reference_kwargs() -> dict:
    """The parity fixtures' reference constructor kwargs, as ``--reference-config`` takes them."""
    import json

    from Testing.conftest import PARITY_DIR

    return {
        "ctvit": json.loads((PARITY_DIR / "ctvit/config.json").read_text())["constructor_kwargs"],
        "maskgit": json.loads((PARITY_DIR / "maskgit/config.json").read_text())["constructor_kwargs"],
        "superres": json.loads((PARITY_DIR / "superres/config.json").read_text())["resolved_unet_kwargs(unet._locals)"],
    }


def write_small_official_checkpoints(root: Path) -> Path:
    """The parity weights laid out exactly like the three released ``.pt`` files, plus ``reference.json``
    (their constructor kwargs) and a tiny T5 in ``t5/``."""
    import json

    import torch
    from safetensors.torch import load_file

    from Testing.conftest import PARITY_DIR

    ctvit = load_file(PARITY_DIR / "ctvit/state.safetensors")
    maskgit = load_file(PARITY_DIR / "maskgit/state.safetensors")
    unet = load_file(PARITY_DIR / "superres/unet_state.safetensors")
    root.mkdir(parents=True, exist_ok=True)
    # training-only entries that the converter must ignore
    torch.save({**ctvit, "vgg.features.0.weight": torch.randn(4, 3, 3, 3), "discr.conv.weight": torch.randn(2)},
               root / "ctvit_pretrained.pt")
    torch.save({**{f"maskgit.{k}": v for k, v in maskgit.items()}, **{f"ctvit.{k}": v for k, v in ctvit.items()}},
               root / "transformer_pretrained.pt")
    online = {k: v + 1.0 if v.is_floating_point() else v for k, v in unet.items()}  # not what sampling uses
    torch.save(
        {
            "model": {"unets.0.dummy_parameter": torch.zeros(1), **{f"unets.1.{k}": v for k, v in online.items()}},
            "ema": {
                "1.initted": torch.tensor(True),
                "1.step": torch.tensor(10),
                **{f"1.ema_model.{k}": v for k, v in unet.items()},
                **{f"1.online_model.{k}": v for k, v in online.items()},
            },
            "steps": torch.tensor([0, 100]),
            "optim1": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
            "time_elapsed": 12.5,
        },
        root / "superres_pretrained.pt",
    )
    (root / "reference.json").write_text(json.dumps(reference_kwargs()))
    make_tiny_t5(root / "t5")
    return root
