"""Fixtures: a tiny bundle, a token file and a real ``generatect serve`` subprocess per test module."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from Testing.server.serving import ServerProcess


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from Testing.tiny_models import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("server-bundle") / "tiny")


@pytest.fixture(scope="session")
def token_file(tmp_path_factory) -> tuple[Path, str]:
    token = secrets.token_urlsafe(32)
    path = tmp_path_factory.mktemp("server-token") / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path, token


@pytest.fixture(scope="module")
def server(tiny_bundle, token_file, tmp_path_factory):
    """One server for a test module: queue of 2, results kept 10 minutes."""
    path, token = token_file
    work = tmp_path_factory.mktemp("server") / "work"
    proc = ServerProcess(tiny_bundle, work, path, token, "--queue-size", "2", "--job-timeout", "120")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
