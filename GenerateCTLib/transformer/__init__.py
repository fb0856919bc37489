"""MaskGIT text-conditional token transformer and its iterative-unmasking scheduler."""

from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig
from GenerateCTLib.transformer.masking_scheduler import (
    MaskGITScheduler,
    MaskGITSchedulerOutput,
    sample_token_ids,
)

__all__ = ["MaskGIT", "MaskGITConfig", "MaskGITScheduler", "MaskGITSchedulerOutput", "sample_token_ids"]
