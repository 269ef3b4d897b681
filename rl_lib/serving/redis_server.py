"""A local ``redis-server`` (the Debian package) for ``make serve``, the demo and the tests.

It listens on a unix socket inside its folder (no TCP port unless asked for one, and then only on
127.0.0.1), keeps an append-only file there so a restart loses nothing that was acknowledged, and
stops with the process that started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from rl_lib.errors import UserError


class LocalRedis:
    """``with LocalRedis(folder) as r: r.url`` -- a private redis-server.

    :param folder: its data folder (socket, append-only file, log).
    :param port: a TCP port on 127.0.0.1 (0: pick a free one; None: unix socket only).
    :param password: ``requirepass`` (None: no password).
    """

    def __init__(self, folder: str | Path, port: int | None = None, password: str | None = None) -> None:
        self.folder = Path(folder).resolve()  # redis-server changes into --dir before opening its log
        self.port = free_port() if port == 0 else port
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError("redis-server not found: apt-get install -y redis-server (or pass --redis-url)")
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port or 0), "--bind", "127.0.0.1", "--unixsocket",
                str(self.socket_path), "--unixsocketperm", "700", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"redis-server exited at start; see {self.folder / 'redis.log'}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise UserError(
            f"redis-server did not answer within {timeout_s:.0f} s; see {self.folder / 'redis.log'}"
        )

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, password=self.password, socket_timeout=0.2).ping())
        except Exception:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
