"""PACS round trip against a real Orthanc + DICOMweb plugin (Debian packages), started here on random
loopback ports with a throwaway config and storage, and stopped afterwards.

Orthanc 1.10 has no bind-address option: its HTTP server refuses non-loopback clients
(``RemoteAccessAllowed: false``) and its DICOM server only accepts the AE ``GENERATECT`` from 127.0.0.1
(a registered modality, ``DicomCheckModalityHost``, no ``DicomAlwaysAllow*``). The tests skip, saying so,
only when Orthanc is not installed (``scripts/run-tests.sh`` installs it with apt-get where it can).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pydicom
import pytest
import requests

from GenerateCTLib import dicom, pacs
from GenerateCTLib.cli import main
from GenerateCTLib.io import VolumeGeometry

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_AET = "ORTHANCTEST"
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb (scripts/run-tests.sh does this when it can)"
GEOMETRY = VolumeGeometry((2.0, 0.8, 0.6), (-20.0, -30.0, 10.0),
                          ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)))
PROVENANCE = {"prompt": "60 years old female: Right lower lobe nodule.", "seeds": {"sample_tokens": 11},
              "bundle": {"name": "tiny-test", "version": "0.0.1"}, "generatect_version": "0.1.0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not os.path.exists(ORTHANC):
        pytest.skip(f"Orthanc is not installed and could not be installed here: {INSTALL_HINT}")
    if not os.path.exists(DICOMWEB_PLUGIN):
        pytest.skip(f"Orthanc's DICOMweb plugin ({DICOMWEB_PLUGIN}) is not installed: {INSTALL_HINT}")
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "GENERATECT-TEST", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "StorageCompression": False, "Plugins": [DICOMWEB_PLUGIN], "ConcurrentJobs": 1,
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
        "HttpCompressionEnabled": False, "DicomServerEnabled": True, "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port, "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
        "DicomModalities": {"generatect": ["GENERATECT", "127.0.0.1", 104]},
        "MaximumPduLength": 131072, "SaveJobs": False, "OverwriteInstances": True, "DeidentifyLogs": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"127.0.0.1:{http_port}", "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=1))
    log_path = root / "orthanc.log"
    url = f"http://127.0.0.1:{http_port}"
    with open(log_path, "wb") as log:
        # TCP_NODELAY: without it every C-STORE waits ~55 ms (Nagle + delayed ACK inside DCMTK)
        proc = subprocess.Popen([ORTHANC, "--no-jobs", str(root / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, TCP_NODELAY="1"),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if requests.get(url + "/system", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc not ready after 30 s: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield {"url": url, "dicomweb": url + "/dicom-web", "dimse": f"127.0.0.1:{dicom_port}:{ORTHANC_AET}",
                   "dicom_port": dicom_port}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _export(tmp_path, name, seed, **kwargs):
    volume = np.random.default_rng(seed).uniform(-1000, 1000, (4, 24, 32)).astype(np.float32)
    export = dicom.write_dicom(tmp_path / name, volume, GEOMETRY, provenance=PROVENANCE, **kwargs)
    return np.rint(volume).astype(np.int16), export


def _stored_copy(orthanc, export) -> list[pydicom.Dataset]:
    """The instances as Orthanc stored them (REST download of each file), sorted by InstanceNumber."""
    found = requests.post(orthanc["url"] + "/tools/lookup", data=export.series_instance_uid, timeout=10).json()
    (series,) = [f for f in found if f["Type"] == "Series"]
    instances = requests.get(f"{orthanc['url']}/series/{series['ID']}/instances", timeout=10).json()
    datasets = []
    for instance in instances:
        raw = requests.get(f"{orthanc['url']}/instances/{instance['ID']}/file", timeout=10).content
        datasets.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw)))
    return sorted(datasets, key=lambda d: int(d.InstanceNumber))


def _check_survived(orthanc, export, truth):
    stored = _stored_copy(orthanc, export)
    assert len(stored) == len(export.files)
    if len(stored) == 1:  # multi-frame: highdicom orders the frames by position (test_dicom checks the geometry)
        assert np.array_equal(stored[0].pixel_array, pydicom.dcmread(export.files[0]).pixel_array)
        assert np.array_equal(np.sort(stored[0].pixel_array, axis=None), np.sort(truth, axis=None))
    else:
        assert np.array_equal(np.stack([d.pixel_array for d in stored]), truth)
    for ds in stored:
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SyntheticData == "YES"
        codes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in ds.ContributingEquipmentSequence]
        assert "109100" in codes
        block = ds.private_block(dicom.PRIVATE_GROUP, dicom.PRIVATE_CREATOR)
        assert block[0x04].VR == "UT" and json.loads(block[0x04].value)["seeds"] == PROVENANCE["seeds"]
    # ... and the PACS's own DICOMweb metadata still knows the flag and the equipment item, with their VRs
    metadata = requests.get(f"{orthanc['dicomweb']}/studies/{export.study_instance_uid}/series/"
                            f"{export.series_instance_uid}/metadata", timeout=10,
                            headers={"Accept": "application/dicom+json"}).json()
    assert metadata[0]["0008001C"] == {"vr": "CS", "Value": ["YES"]}
    item = metadata[0]["0018A001"]["Value"][0]
    assert item["0040A170"]["Value"][0]["00080104"]["Value"] == ["Synthesizing Equipment"]


def test_stow_rs_push_found_by_qido_and_c_find(orthanc, tmp_path):
    truth, export = _export(tmp_path, "stow", 0)
    result = pacs.push_folder(export.folder, dicomweb=orthanc["dicomweb"])
    assert result.num_instances == 4
    (series,) = result.series
    assert series.series_instance_uid == export.series_instance_uid and series.num_instances == 4
    assert "SYNTHETIC" in series.series_description and series.modality == "CT"
    host, port, aet = pacs.parse_dimse_address(orthanc["dimse"])
    (found,) = pacs.c_find_series(host, port, aet, export.study_instance_uid)
    assert found.series_instance_uid == export.series_instance_uid and found.num_instances == 4
    _check_survived(orthanc, export, truth)


def test_c_store_push_found_by_c_find_and_qido(orthanc, tmp_path):
    truth, export = _export(tmp_path, "cstore", 1)
    result = pacs.push_folder(export.folder, dimse=orthanc["dimse"])
    assert result.num_instances == 4 and result.series[0].num_instances == 4
    (found,) = pacs.qido_rs_series(orthanc["dicomweb"], export.study_instance_uid)
    assert found.series_instance_uid == export.series_instance_uid and found.num_instances == 4
    _check_survived(orthanc, export, truth)


def test_multiframe_push_by_both_routes(orthanc, tmp_path):
    truth, export = _export(tmp_path, "mf", 2, multiframe=True, include_prompt=False)
    assert pacs.push_folder(export.folder, dimse=orthanc["dimse"]).series[0].num_instances == 1
    assert pacs.push_folder(export.folder, dicomweb=orthanc["dicomweb"]).num_instances == 1
    _check_survived(orthanc, export, truth)


def test_cli_push(orthanc, tmp_path, capsys):
    _, export = _export(tmp_path, "cli", 3)
    assert main(["push", str(export.folder), "--dicomweb", orthanc["dicomweb"]]) == 0
    out = capsys.readouterr().out
    assert "confirmed by QIDO-RS" in out and "4 instance(s)" in out and export.series_instance_uid in out
    assert main(["push", str(export.folder), "--dimse", orthanc["dimse"], "--calling-aet", "GENERATECT"]) == 0
    assert "confirmed by C-FIND" in capsys.readouterr().out


def test_unknown_calling_aet_is_rejected_clearly(orthanc, tmp_path):
    _, export = _export(tmp_path, "rej", 4)
    with pytest.raises(pacs.PacsError, match="rejected"):
        pacs.push_folder(export.folder, dimse=orthanc["dimse"], calling_aet="INTRUDER")


# --- no PACS needed -------------------------------------------------------------------------------------------


def test_unreachable_pacs_gives_clear_errors(tmp_path, capsys):
    _, export = _export(tmp_path, "down", 5)
    port = _free_port()  # nothing listens there
    with pytest.raises(pacs.PacsError, match=f"cannot reach DICOMweb server http://127.0.0.1:{port}"):
        pacs.push_folder(export.folder, dicomweb=f"http://127.0.0.1:{port}/dicom-web", timeout=5)
    with pytest.raises(pacs.PacsError, match=f"cannot reach DICOM node PACS@127.0.0.1:{port}"):
        pacs.push_folder(export.folder, dimse=f"127.0.0.1:{port}:PACS", timeout=5)
    for argv in (["--dicomweb", f"http://127.0.0.1:{port}"], ["--dimse", f"127.0.0.1:{port}:PACS"]):
        assert main(["push", str(export.folder), *argv, "--timeout", "5"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("generatect: error: cannot reach") and err.count("\n") == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--dimse", "host:notaport:AET"], "port"),
    (["--dimse", "hostonly"], "HOST:PORT:AET"),
    (["--dimse", "h:104:THIS_AE_TITLE_IS_TOO_LONG"], "AE title"),
    (["--dicomweb", "ftp://x"], "http"),
])
def test_bad_push_arguments(tmp_path, capsys, argv, message):
    _, export = _export(tmp_path, "bad", 6)
    assert main(["push", str(export.folder), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generatect: error:") and message in err
    assert main(["push", str(tmp_path / "nothing"), "--dicomweb", "http://127.0.0.1:1"]) == 2
    assert "not found" in capsys.readouterr().err
