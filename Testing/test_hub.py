"""Official-weight download through a loopback server that speaks the hub's resolve protocol."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from GenerateCTLib.checkpoints import Bundle
from GenerateCTLib.hub import OFFICIAL_FILES, download_official_bundle, fetch_official_checkpoints
from GenerateCTLib.modeling import CheckpointError
from Testing.tiny_models import reference_kwargs, write_small_official_checkpoints


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    return write_small_official_checkpoints(tmp_path_factory.mktemp("official"))


@pytest.fixture
def hub(official_files):
    """A local hub serving the three files; ``hub.corrupt`` serves wrong bytes under the right sha256."""
    files = {rel: (official_files / rel.split("/")[-1]).read_bytes() for rel in OFFICIAL_FILES.values()}
    state = {"corrupt": False, "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _file(self):
            state["requests"].append((self.command, self.path))
            parts = self.path.split("?")[0].split("/")  # /org/repo/resolve/rev/path...
            return files.get("/".join(parts[5:])) if parts[3:4] == ["resolve"] else None

        def _headers(self, data, length):
            sha = hashlib.sha256(data).hexdigest()
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def do_HEAD(self):
            data = self._file()
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self._headers(data, len(data))

        def do_GET(self):
            data = self._file()
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            body = bytes(reversed(data)) if state["corrupt"] else data
            self.send_response(200)
            self._headers(data, len(body))
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["endpoint"] = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()


def test_download_and_convert_through_the_hub_protocol(hub, official_files, tmp_path):
    out = download_official_bundle(tmp_path / "bundle", endpoint=hub["endpoint"], cache_dir=tmp_path / "cache",
                                   reference_config=reference_kwargs(), text_encoder=official_files / "t5")
    bundle = Bundle(out)
    bundle.verify()
    sources = bundle.metadata["conversion"]["files"]
    assert sources["transformer"]["sha256"] == hashlib.sha256(
        (official_files / "transformer_pretrained.pt").read_bytes()).hexdigest()
    # a second fetch is served from the cache: no more GET requests
    gets = sum(1 for method, _ in hub["requests"] if method == "GET")
    fetch_official_checkpoints(endpoint=hub["endpoint"], cache_dir=tmp_path / "cache")
    assert sum(1 for method, _ in hub["requests"] if method == "GET") == gets


def test_corrupted_download_is_rejected_and_removed(hub, tmp_path):
    hub["corrupt"] = True
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_official_checkpoints(endpoint=hub["endpoint"], cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*.pt") if p.is_file()]


def test_unreachable_hub_and_local_copy(official_files, tmp_path):
    with pytest.raises(ValueError, match="--from DIR"):
        fetch_official_checkpoints(endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    paths = fetch_official_checkpoints(from_dir=official_files)
    assert paths["superres"].name == "superres_pretrained.pt"
    with pytest.raises(ValueError, match="ctvit_pretrained.pt"):
        fetch_official_checkpoints(from_dir=tmp_path)


def test_cli_download_from_a_local_copy_then_use_it_as_official(official_files, tmp_path, monkeypatch, capsys):
    from GenerateCTLib.cli import main

    monkeypatch.setenv("GENERATECT_HOME", str(tmp_path / "home"))
    assert main(["info", "--model", "official"]) == 2
    assert "weights download" in capsys.readouterr().err
    # the small fixture weights need their reference config: convert through the library, like the CLI does
    download_official_bundle(from_dir=official_files, reference_config=reference_kwargs(),
                             text_encoder=official_files / "t5")
    assert main(["info", "--model", "official", "--verify"]) == 0
    assert '"verified": true' in capsys.readouterr().out
    # the real CLI path: released configuration, so these small weights are rejected with the key named
    assert main(["weights", "download", "--from", str(official_files), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "missing key" in capsys.readouterr().err and not (tmp_path / "x").exists()
