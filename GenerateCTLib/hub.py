"""Downloading the official GenerateCT checkpoints from the Hugging Face hub (or an air-gapped copy).

``huggingface_hub`` keeps the files in its user cache, resumes interrupted downloads and reuses what is
already there. After each download the file's sha256 is checked against the one the hub announces for
it (the ETag of a Git-LFS file), and a mismatch deletes the file and stops with an error.

Importing this module is cheap (torch and the hub client load inside the functions).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

OFFICIAL_REPO_ID = "generatect/GenerateCT"
OFFICIAL_FILES = {
    "ctvit": "pretrained_models/ctvit_pretrained.pt",
    "transformer": "pretrained_models/transformer_pretrained.pt",
    "superres": "pretrained_models/superres_pretrained.pt",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    """``$GENERATECT_HOME`` or ``$XDG_CACHE_HOME/generatect`` (``~/.cache/generatect``)."""
    base = os.environ.get("GENERATECT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "generatect"
    )
    return Path(base)


def official_bundle_dir() -> Path:
    """Where the converted official bundle lives by default (``--model official``)."""
    return default_cache_dir() / "official"


def _from_local_copy(from_dir: Path) -> dict[str, Path]:
    if not from_dir.is_dir():
        raise ValueError(f"--from: folder {from_dir} not found")
    found = {}
    for key, relpath in OFFICIAL_FILES.items():
        candidates = [from_dir / relpath, from_dir / Path(relpath).name]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ValueError(f"--from: {Path(relpath).name} not found in {from_dir} (nor in its pretrained_models/)")
        found[key] = path
    return found


def fetch_official_checkpoints(
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str = "main",
    endpoint: str | None = None,
    from_dir: str | os.PathLike | None = None,
    token: str | None = None,
    tqdm_class: Any = None,
) -> dict[str, Path]:
    """Local paths of the three official ``.pt`` files, downloading what is missing.

    Args:
        cache_dir: the hub cache folder (default: ``<generatect cache>/hub``).
        revision: a branch, tag or commit of ``generatect/GenerateCT``.
        endpoint: hub address (default: ``HF_ENDPOINT`` or huggingface.co).
        from_dir: take the files from this folder instead (air-gapped machines).
        tqdm_class: progress-bar class handed to ``huggingface_hub``.
    """
    if from_dir is not None:
        return _from_local_copy(Path(from_dir))
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    from GenerateCTLib.checkpoints import sha256_file
    from GenerateCTLib.modeling import CheckpointError

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "hub"
    paths = {}
    for key, filename in OFFICIAL_FILES.items():
        try:
            url = hf_hub_url(OFFICIAL_REPO_ID, filename, revision=revision, endpoint=endpoint)
            metadata = get_hf_file_metadata(url, token=token)
            path = Path(
                hf_hub_download(
                    OFFICIAL_REPO_ID,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    endpoint=endpoint,
                    token=token,
                    tqdm_class=tqdm_class,
                )
            )
        except Exception as exc:  # network, HTTP and hub errors all end the same way for the user
            raise ValueError(
                f"cannot download {filename} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                "check the connection, or copy the files and use --from DIR"
            ) from exc
        expected = (metadata.etag or "").strip('"').lower()
        if _SHA256.match(expected):
            actual = sha256_file(path)
            if actual != expected:
                path.unlink(missing_ok=True)
                raise CheckpointError(f"{filename}: downloaded sha256 {actual} differs from the hub's {expected}")
        paths[key] = path
    return paths


def download_official_bundle(
    out_dir: str | os.PathLike | None = None,
    *,
    text_encoder: str | os.PathLike = "google/t5-v1_1-base",
    reference_config: dict | None = None,
    overwrite: bool = False,
    **fetch_kwargs: Any,
) -> Path:
    """Fetch the official checkpoints and convert them into a bundle (default: :func:`official_bundle_dir`)."""
    from GenerateCTLib.checkpoints import convert_official

    files = fetch_official_checkpoints(**fetch_kwargs)
    return convert_official(
        ctvit=files["ctvit"],
        transformer=files["transformer"],
        superres=files["superres"],
        out_dir=Path(out_dir) if out_dir is not None else official_bundle_dir(),
        reference_config=reference_config,
        text_encoder=text_encoder,
        overwrite=overwrite,
    )
