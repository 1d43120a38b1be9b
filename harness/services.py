"""Real backing services for the tests: a throwaway PostgreSQL cluster (and, later, Redis).

Each is started on a free loopback port in a private directory and stopped at the end of the
session. PostgreSQL refuses to run as root, so as root the cluster runs as `postgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: run `make test`, which installs it."
        )
    return path


@dataclass
class PostgresServer:
    directory: Path
    port: int
    run_as: str | None

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    @classmethod
    def start(cls) -> PostgresServer:
        directory = Path(tempfile.mkdtemp(prefix="am-pg-"))
        run_as = "postgres" if os.geteuid() == 0 else None
        server = cls(directory, free_port(), run_as)
        server.socket_dir.mkdir()
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (directory, server.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = directory / "data"
        server._run(
            _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        options = (
            f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        server._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return server

    def create_database(self, name: str) -> None:
        self._run(
            _pg_bin("psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            f'CREATE DATABASE "{name}"',
        )

    def restart(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",  # else the new server holds the pipe this call waits on
            str(self.directory / "log"),
            "-w",
            "-m",
            "fast",
            "restart",
        )

    def stop(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-m",
            "immediate",
            "stop",
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Nothing listens on port {port} after {timeout} seconds.")


@dataclass
class RedisServer:
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int | None = None) -> RedisServer:
        server = cls(Path(tempfile.mkdtemp(prefix="am-redis-")), port or free_port())
        server.resume()
        return server

    def resume(self) -> None:
        """Starts (or restarts, on the same port) the server."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it.")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def pause(self) -> None:
        """Stops the server; `resume` brings it back on the same port."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        self.pause()
        shutil.rmtree(self.directory, ignore_errors=True)


VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


@dataclass
class ServerProcess:
    """A real `agency-messaging serve` process on a free port."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, env: dict[str, str], workdir: Path, port: int | None = None) -> ServerProcess:
        server = cls(env, port or free_port(), workdir / f"server-{time.monotonic_ns()}.log")
        server.launch()
        return server

    def launch(self) -> None:
        command = [str(VENV_BIN / "agency-messaging"), "serve", "--port", str(self.port)]
        full_env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
            )
        wait_for_port(self.port, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until /readyz answers 200 (database and broker reachable)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=3) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = error.read().decode(errors="replace")
            except OSError as error:
                last = str(error)
            time.sleep(0.1)
        raise AssertionError(f"{self.url} never became ready: {last}\n{self.log()}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the process dies without closing anything."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
