"""Send a DICOM folder to a PACS and query it back: DICOMweb (STOW-RS / QIDO-RS, PS3.18 §10.5 / §10.6)
with ``requests``, and DIMSE (C-STORE / C-FIND, PS3.4 Annexes B and C) with pynetdicom.

C-STORE offers Explicit VR Little Endian first, in a presentation context of its own, with Implicit VR as
a separate fallback context: over implicit VR a PACS without our dictionary stores the private provenance
and ``SyntheticData`` as untyped bytes (``UN``), so the fallback is logged as a warning.

Every push is confirmed by a query for each pushed series: :func:`push_folder` raises :class:`PacsError`
when the PACS cannot be reached, refuses an instance, or does not list the series afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["PacsError", "PushResult", "SeriesInfo", "c_find_series", "c_store", "find_dicom_files",
           "parse_dimse_address", "push_folder", "qido_rs_series", "stow_rs"]

DEFAULT_CALLING_AET = "GENERATECT"
STOW_BATCH_BYTES = 64 * 1024 * 1024  # bounds memory: one multipart request per ~64 MB
_TAG_COUNT = "00201209"  # NumberOfSeriesRelatedInstances


class PacsError(ConnectionError):
    """The PACS could not be reached, refused instances, or does not list what was sent."""


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series as listed by the PACS (QIDO-RS or C-FIND)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    series_description: str = ""
    num_instances: int | None = None


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push sent and how the PACS confirmed it."""

    destination: str
    num_instances: int
    series: tuple[SeriesInfo, ...]


@dataclasses.dataclass(frozen=True)
class _Instance:
    path: Path
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def find_dicom_files(folder: str | os.PathLike) -> list[_Instance]:
    """Every DICOM Part 10 file under ``folder`` (recursively, hidden entries skipped), sorted by path."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DICOM folder not found")
    instances = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) != b"DICM":
                continue
        keys = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keys)
        except (pydicom.errors.InvalidDicomError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: unreadable DICOM file ({exc})") from exc
        missing = [key for key in keys if not ds.get(key)]
        if missing:
            raise ValueError(f"{path}: DICOM file without {', '.join(missing)}; cannot push it")
        instances.append(_Instance(path, *(str(ds.get(key)) for key in keys)))
    if not instances:
        raise FileNotFoundError(f"{folder}: no DICOM files (Part 10, 'DICM' preamble) found")
    return instances


# --- DICOMweb -----------------------------------------------------------------------------------------------


def _http(method: str, url: str, *, timeout: float, session=None, **kwargs):
    import requests

    try:
        response = (session or requests).request(method, url, timeout=timeout, **kwargs)
    except requests.exceptions.Timeout as exc:
        raise PacsError(f"DICOMweb server {url} did not answer within {timeout:g} s") from exc
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"cannot reach DICOMweb server {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code in (401, 403):
        raise PacsError(f"DICOMweb server {url} refused access (HTTP {response.status_code})")
    return response


def _batches(instances: Sequence[_Instance], limit: int) -> Iterable[list[_Instance]]:
    batch, size = [], 0
    for instance in instances:
        length = instance.path.stat().st_size
        if batch and size + length > limit:
            yield batch
            batch, size = [], 0
        batch.append(instance)
        size += length
    if batch:
        yield batch


def _multipart(paths: Sequence[Path]) -> tuple[bytes, str]:
    boundary = f"generatect-{secrets.token_hex(16)}"
    parts = []
    for path in paths:
        parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_rs(instances: Sequence[_Instance], url: str, *, timeout: float = 60.0, session=None) -> int:
    """STOW-RS every instance to ``{url}/studies``; return how many the server stored.

    Raises:
        PacsError: unreachable server, an HTTP error, or any instance listed in FailedSOPSequence.
    """
    url = url.rstrip("/")
    stored = 0
    for batch in _batches(instances, STOW_BATCH_BYTES):
        body, content_type = _multipart([i.path for i in batch])
        response = _http("POST", f"{url}/studies", timeout=timeout, session=session, data=body,
                         headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        failed = (answer.get("00081198") or {}).get("Value") or []  # FailedSOPSequence
        referenced = (answer.get("00081199") or {}).get("Value") or []  # ReferencedSOPSequence
        if response.status_code not in (200, 202) or failed:
            reason = ""
            if failed:
                reason = f"; {len(failed)} instance(s) failed, first FailureReason " \
                         f"{(failed[0].get('00081197') or {}).get('Value', ['?'])[0]}"
            raise PacsError(f"STOW-RS to {url}/studies failed: HTTP {response.status_code} "
                            f"{response.reason}{reason}: {response.text[:200]}")
        stored += len(referenced) if referenced else len(batch)
    return stored


def _json_value(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def qido_rs_series(url: str, study_uid: str, series_uid: str | None = None, *, timeout: float = 30.0,
                   session=None) -> list[SeriesInfo]:
    """QIDO-RS ``{url}/studies/{study}/series`` (optionally one SeriesInstanceUID)."""
    params = {"includefield": ["0008103E", "00080060", _TAG_COUNT]}
    if series_uid:
        params["SeriesInstanceUID"] = series_uid
    response = _http("GET", f"{url.rstrip('/')}/studies/{study_uid}/series", timeout=timeout, session=session,
                     params=params, headers={"Accept": "application/dicom+json"})
    if response.status_code == 204 or (response.status_code == 404 and not response.content):
        return []
    if response.status_code != 200:
        raise PacsError(f"QIDO-RS at {url} failed: HTTP {response.status_code} {response.reason}")
    try:
        items = response.json()
    except ValueError as exc:
        raise PacsError(f"QIDO-RS at {url} did not return DICOM JSON: {response.text[:200]!r}") from exc
    result = []
    for item in items:
        count = _json_value(item, _TAG_COUNT, None)
        result.append(SeriesInfo(str(_json_value(item, "0020000D", study_uid)), str(_json_value(item, "0020000E")),
                                 str(_json_value(item, "00080060")), str(_json_value(item, "0008103E")),
                                 None if count is None else int(count)))
    return result


# --- DIMSE --------------------------------------------------------------------------------------------------


def parse_dimse_address(address: str) -> tuple[str, int, str]:
    """``HOST:PORT:AET`` → ``(host, port, called AE title)``."""
    host, sep, rest = address.rpartition(":")
    host, sep2, port = host.rpartition(":")
    if not (sep and sep2 and host):
        raise ValueError(f"DIMSE address {address!r} must be HOST:PORT:AET, e.g. pacs.local:4242:ORTHANC")
    _check_aet(rest, "called AE title")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"DIMSE address {address!r}: port must be a number from 1 to 65535")
    return host.strip("[]"), int(port), rest


def _check_aet(aet: str, what: str) -> None:
    if not 1 <= len(aet.strip()) <= 16 or len(aet) > 16 or not aet.isascii() or "\\" in aet or not aet.isprintable():
        raise ValueError(f"{what} {aet!r} must be 1-16 printable ASCII characters without backslash")


def _associate(host: str, port: int, called_aet: str, calling_aet: str, contexts, timeout: float):
    try:
        from pynetdicom import AE
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DIMSE needs pynetdicom: pip install 'GenerateCTLib[dicom]'") from exc
    _check_aet(called_aet, "called AE title")
    _check_aet(calling_aet, "calling AE title")
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "the association was rejected (check the called AE title and that the PACS knows the caller)"
        elif assoc.is_aborted:
            why = "the association was aborted"
        else:
            why = "connection refused or timed out"
        raise PacsError(f"cannot reach DICOM node {called_aet}@{host}:{port} as {calling_aet}: {why}")
    return assoc


def c_store(instances: Sequence[_Instance], host: str, port: int, called_aet: str, *,
            calling_aet: str = DEFAULT_CALLING_AET, timeout: float = 30.0) -> int:
    """C-STORE every instance over one association; return the number stored (warnings count as stored)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    sop_classes = sorted({i.sop_class_uid for i in instances})
    if len(sop_classes) > 64:
        raise ValueError(f"{len(sop_classes)} SOP classes in one push; at most 64 are supported")
    # explicit VR first and alone, so the PACS cannot prefer implicit VR inside a shared context
    contexts = [(uid, [ExplicitVRLittleEndian]) for uid in sop_classes]
    contexts += [(uid, [ImplicitVRLittleEndian]) for uid in sop_classes]
    assoc = _associate(host, port, called_aet, calling_aet, contexts, timeout)
    stored, failures = 0, []
    try:
        accepted = assoc.accepted_contexts
        explicit = {c.abstract_syntax for c in accepted if c.transfer_syntax[0] == ExplicitVRLittleEndian}
        for uid in set(sop_classes) - explicit:
            log.warning("%s accepted %s only in Implicit VR: private provenance will arrive untyped", called_aet, uid)
        for instance in instances:
            try:
                status = assoc.send_c_store(pydicom.dcmread(instance.path))
            except ValueError as exc:  # no accepted presentation context for this SOP class
                failures.append(f"{instance.path.name}: {exc}")
                continue
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"C-STORE to {called_aet}@{host}:{port} got no response (timeout or abort)")
            if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                stored += 1
            else:
                failures.append(f"{instance.path.name}: status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    if failures:
        raise PacsError(f"C-STORE to {called_aet}@{host}:{port}: {len(failures)} of {len(instances)} instance(s) "
                        f"refused; first: {failures[0]}")
    return stored


def c_find_series(host: str, port: int, called_aet: str, study_uid: str, series_uid: str | None = None, *,
                  calling_aet: str = DEFAULT_CALLING_AET, timeout: float = 30.0) -> list[SeriesInfo]:
    """C-FIND (Study Root, SERIES level) for the series of one study."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid or ""
    query.Modality = query.SeriesDescription = query.NumberOfSeriesRelatedInstances = ""
    assoc = _associate(host, port, called_aet, calling_aet, [(FindModel, None)], timeout)
    result = []
    try:
        for status, identifier in assoc.send_c_find(query, FindModel):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"C-FIND at {called_aet}@{host}:{port} got no response (timeout or abort)")
            if code in (0xFF00, 0xFF01) and identifier is not None:
                count = identifier.get("NumberOfSeriesRelatedInstances")
                result.append(SeriesInfo(str(identifier.StudyInstanceUID), str(identifier.SeriesInstanceUID),
                                         str(identifier.get("Modality", "")),
                                         str(identifier.get("SeriesDescription", "")),
                                         None if count in (None, "") else int(count)))
            elif code != 0x0000:
                raise PacsError(f"C-FIND at {called_aet}@{host}:{port} failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return result


# --- push + confirm -----------------------------------------------------------------------------------------


def push_folder(folder: str | os.PathLike, *, dicomweb: str | None = None, dimse: str | None = None,
                calling_aet: str = DEFAULT_CALLING_AET, timeout: float = 60.0) -> PushResult:
    """Send every DICOM file under ``folder`` by STOW-RS (``dicomweb`` base URL) or C-STORE (``dimse``
    ``HOST:PORT:AET``), then query each pushed series back (QIDO-RS / C-FIND) to confirm it is listed.
    """
    if (dicomweb is None) == (dimse is None):
        raise ValueError("give exactly one destination: dicomweb=URL or dimse='HOST:PORT:AET'")
    if dicomweb is not None and not dicomweb.startswith(("http://", "https://")):
        raise ValueError(f"DICOMweb URL {dicomweb!r} must start with http:// or https://")
    instances = find_dicom_files(folder)
    pushed: dict[tuple[str, str], int] = {}
    for instance in instances:
        key = (instance.study_uid, instance.series_uid)
        pushed[key] = pushed.get(key, 0) + 1
    if dicomweb is not None:
        destination = dicomweb.rstrip("/")
        count = stow_rs(instances, destination, timeout=timeout)
        found = [qido_rs_series(destination, study, series, timeout=timeout) for study, series in pushed]
    else:
        host, port, aet = parse_dimse_address(dimse)
        destination = f"{aet}@{host}:{port}"
        count = c_store(instances, host, port, aet, calling_aet=calling_aet, timeout=timeout)
        found = [c_find_series(host, port, aet, study, series, calling_aet=calling_aet, timeout=timeout)
                 for study, series in pushed]
    confirmed = []
    for ((study, series), expected), listed in zip(pushed.items(), found, strict=True):
        match = [s for s in listed if s.series_instance_uid == series]
        if not match:
            raise PacsError(f"{destination} accepted the push but does not list series {series} (study {study})")
        if match[0].num_instances is not None and match[0].num_instances < expected:
            raise PacsError(f"{destination} lists {match[0].num_instances} of {expected} instance(s) of series "
                            f"{series}")
        confirmed.append(match[0])
    log.info("pushed %d instance(s) to %s: %s", count, destination,
             json.dumps([dataclasses.asdict(s) for s in confirmed]))
    return PushResult(destination=destination, num_instances=count, series=tuple(confirmed))
