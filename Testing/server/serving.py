"""Run a real ``generatect serve`` (uvicorn) in a subprocess on 127.0.0.1:<random port>."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
# the serve command exactly as GenerateCTLib.cli will register it, with main()'s one-line errors
LAUNCHER = """
import argparse, logging, sys
from GenerateCTLib.cli import CLIError
from GenerateCTLib.server.cli import add_serve_command
parser = argparse.ArgumentParser(prog="generatect")
add_serve_command(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
logging.basicConfig(level=logging.INFO, format="%(message)s")
try:
    sys.exit(args.func(args))
except (CLIError, ValueError, OSError) as exc:
    print(f"generatect: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""

# slow enough to cancel or kill mid-run (minutes on the tiny bundle), fast to stop (one step ≈ 10 ms)
SLOW_JOB = {"prompt": "70 years old male: emphysema.", "num_slices": 9, "steps": 100, "sr_steps": 1000, "seed": 1}
FAST_JOB = {"age": 50, "sex": "female", "impression": "cardiomegaly, small pleural effusion.", "num_slices": 5,
            "steps": 2, "sr_steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GENERATECT_TOKEN"}
    # one torch thread: the machine is shared, and the tests need a responsive HTTP thread more than speed
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


class ServerProcess:
    """``generatect serve`` in a subprocess; ``stop()`` sends SIGTERM, ``kill()`` SIGKILL."""

    def __init__(self, bundle: Path, work_dir: Path, token_file: Path, token: str, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token, self.work_dir = token, work_dir
        self.headers = {"Authorization": f"Bearer {token}"}
        self.log = open(work_dir.parent / f"server-{self.port}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "serve", "--model", str(bundle), "--port", str(self.port),
             "--token-file", str(token_file), "--work-dir", str(work_dir), "--device", "cpu",
             "--log-level", "warning", *args],
            cwd=ROOT, env=server_env(), stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/v1/health/ready", headers=self.headers, timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


