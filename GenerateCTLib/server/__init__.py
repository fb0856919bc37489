"""Remote inference: an asynchronous job API over :class:`GenerateCTPipeline` and its client.

One GPU server runs ``generatect serve``; workstations (the CLI's ``generate --remote``, the Slicer module)
submit prompts as jobs, poll their progress and download the volume, its provenance and the attention maps.

Modules:
    ``schemas``: request and response models (pydantic; shared wording of the limits).
    ``security``: bearer-token loading, the constant-time check and the bind-address rule.
    ``jobs``: the bounded queue, the single worker thread that owns the pipeline, results on disk.
    ``app``: the FastAPI app (``create_app(settings)``), versioned under ``/v1``.
    ``client``: :class:`GenerateCTClient`, which needs only ``requests`` (no FastAPI or pydantic).
    ``cli``: ``generatect serve`` and ``generatect generate --remote``.

Nothing is imported here, so ``from GenerateCTLib.server.client import GenerateCTClient`` works in an
environment without the server dependencies (fastapi, uvicorn).
"""
