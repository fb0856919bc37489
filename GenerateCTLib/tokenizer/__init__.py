"""CT-ViT: the VQ tokenizer that turns a (201, 128, 128) volume into a (101, 8, 8) grid of codebook ids."""

from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.tokenizer.quantizer import CosineSimQuantizer

__all__ = ["CTViT", "CTViTConfig", "CosineSimQuantizer"]
