"""Building blocks shared by the CT-ViT tokenizer and the MaskGIT transformer."""

from GenerateCTLib.layers.attention import Attention, BiaslessLayerNorm
from GenerateCTLib.layers.feedforward import FeedForward
from GenerateCTLib.layers.peg import PEG
from GenerateCTLib.layers.position_bias import ContinuousPositionBias
from GenerateCTLib.layers.transformer import Transformer, TransformerLayer

__all__ = [
    "PEG",
    "Attention",
    "BiaslessLayerNorm",
    "ContinuousPositionBias",
    "FeedForward",
    "Transformer",
    "TransformerLayer",
]
