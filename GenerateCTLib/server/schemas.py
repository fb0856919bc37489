"""Request and response models of the ``/v1`` job API (pydantic; they generate ``/openapi.json``).

The limits mirror :meth:`GenerateCTPipeline.check_inputs` and :func:`build_prompt`; the one limit that
depends on the loaded model, ``num_slices <= pipeline.max_slices()``, is checked by the app after these
models (``GET /v1/info`` reports it as ``limits.max_slices``). Every 422 answer is a
:class:`ValidationErrorResponse`: ``message`` is one readable line, ``detail`` lists each error.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from GenerateCTLib.pipeline import MAX_IMPRESSION_CHARS, SEXES

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
VolumeFormatName = Literal["nii.gz", "nrrd"]
FINISHED_STATES = ("succeeded", "failed", "cancelled")

MAX_SLICES_API = 1001  # a hard cap of the API; the model's own maximum is usually lower (201 when released)
MAX_STEPS = 100
MAX_SR_STEPS = 1000
MAX_COND_SCALE = 20.0
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**31 - 1  # the pipeline derives per-slice seeds from it (seed * 100003 + slice) within 64 bits
MAX_PROMPT_CHARS = MAX_IMPRESSION_CHARS + 40


class JobRequest(BaseModel):
    """``POST /v1/jobs``: give ``prompt``, or all of ``age``, ``sex`` and ``impression``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"age": 65, "sex": "male", "impression": "Bilateral pleural effusion.", "seed": 7},
                {"prompt": "40 years old female: Cardiomegaly.", "super_resolve": False, "format": "nrrd"},
            ]
        },
    )

    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS,
        description='full prompt, "{age} years old {sex}: {impression}"',
    )
    age: int | None = Field(None, ge=0, le=120, description="patient age in years")
    sex: Literal[SEXES] | None = Field(None, description="male or female")  # type: ignore[valid-type]
    impression: str | None = Field(
        None, min_length=1, max_length=MAX_IMPRESSION_CHARS, description="radiology impression text"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random seed (default: random, in the provenance)")
    num_slices: int | None = Field(
        None,
        ge=1,
        le=MAX_SLICES_API,
        json_schema_extra={"not": {"multipleOf": 2}},
        description="odd number of slices, at most the model's maximum (GET /v1/info: limits.max_slices); "
        "default: that maximum",
    )
    steps: int = Field(18, ge=1, le=MAX_STEPS, description="MaskGIT decoding steps")
    cond_scale: float | None = Field(None, ge=0, le=MAX_COND_SCALE, allow_inf_nan=False,
                                     description="guidance scale (default: the served model's; 5 as released)")
    temperature: float = Field(0.9, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                               description="MaskGIT sampling temperature, annealed to 0 (0.9 as released)")
    super_resolve: bool = Field(True, description="run the diffusion super-resolution stage (512² slices)")
    sr_steps: int = Field(25, ge=1, le=MAX_SR_STEPS, description="super-resolution diffusion steps")
    attention: bool = Field(False, description="also compute per-word / per-phrase cross-attention heatmaps")
    format: VolumeFormatName = Field("nii.gz", description="volume file format (both gzip-compressed)")
    dtype: Literal["int16", "float32"] = Field("int16", description="voxel type of the volume file (HU)")

    @field_validator("prompt", "impression")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must contain text, not only whitespace")
        return value

    @field_validator("num_slices")
    @classmethod
    def _odd(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError(f"must be odd (1 + 2·k slices), got {value}")
        return value

    @model_validator(mode="after")
    def _prompt_or_parts(self) -> JobRequest:
        parts = {"age": self.age, "sex": self.sex, "impression": self.impression}
        if self.prompt is not None:
            given = [name for name, value in parts.items() if value is not None]
            if given:
                raise ValueError(f"give either prompt, or age, sex and impression, not both (got prompt and {given})")
        else:
            missing = [name for name, value in parts.items() if value is None]
            if missing:
                raise ValueError(f"give prompt, or all of age, sex and impression (missing: {', '.join(missing)})")
        return self


class ResultInfo(BaseModel):
    """The files of a succeeded job."""

    format: VolumeFormatName
    filename: str = Field(description="suggested file name of the volume download")
    size_bytes: int
    sha256: str = Field(description="sha256 of the volume file, also sent as the X-Content-SHA256 header")
    shape: list[int] = Field(description="(z, y, x)")
    attention: bool = Field(description="GET /v1/jobs/{id}/attention has heatmaps")


class JobStatus(BaseModel):
    """``GET /v1/jobs/{id}`` (and the answer to ``POST`` / ``DELETE``)."""

    id: uuid.UUID
    status: JobState
    stage: str | None = Field(None, description="encode_prompt, sample_tokens, decode or super_resolve")
    step: int | None = None
    total: int | None = None
    progress: float = Field(ge=0.0, le=1.0, description="fraction of the whole run, 0 to 1")
    eta_s: float | None = Field(None, description="estimated seconds left while running")
    elapsed_s: float | None = Field(None, description="seconds since the job started running")
    queue_position: int | None = Field(None, description="0 = next to run (queued jobs only)")
    cancel_requested: bool = False
    error: str | None = None
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="Unix time after which a finished job is deleted")
    result: ResultInfo | None = None


class Limits(BaseModel):
    max_slices: int | None = Field(description="the model's maximum num_slices (null until it is loaded)")
    max_steps: int
    max_sr_steps: int
    max_cond_scale: float
    max_impression_chars: int
    max_seed: int
    queue_size: int
    job_timeout_s: float
    result_ttl_s: float
    max_disk_bytes: int
    max_request_bytes: int


class ServerInfo(BaseModel):
    """``GET /v1/info``."""

    generatect_version: str
    api_version: Literal["v1"] = "v1"
    versions: dict[str, str] = Field(description="python, torch, fastapi, uvicorn")
    device: str
    dtype: str | None
    bundle: dict[str, Any] | None = Field(description="name, version, metadata_sha256, intended_use")
    ready: bool
    limits: Limits
    queue: dict[str, int] = Field(description="queued and running job counts")


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    detail: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer except 422."""

    detail: str


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: ``message`` is one readable line; ``detail`` lists the errors."""

    message: str
    detail: list[ValidationErrorItem]
