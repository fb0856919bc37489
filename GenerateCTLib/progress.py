"""Progress reporting and cancellation: one callback feeds the CLI, the server and Slicer.

Kept free of heavy imports so that front ends can import it cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


class GenerationCancelled(Exception):
    """Raised when the progress callback asks to stop; no partial output is kept."""


@dataclasses.dataclass
class ProgressEvent:
    """One progress report.

    Attributes:
        stage: ``encode_prompt``, ``sample_tokens``, ``decode`` or ``super_resolve``.
        step, total: progress within the stage (``step == total`` when it ends).
        eta_s: estimated seconds left for the whole run, None until known.
        elapsed_s: seconds since the run started.
    """

    stage: str
    step: int
    total: int
    eta_s: float | None
    elapsed_s: float


# Return False (or raise GenerationCancelled) to cancel.
ProgressCallback = Callable[[ProgressEvent], Any]
