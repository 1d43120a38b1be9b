"""The `agency-messaging` command as an operator runs it: migrate, serve, demo."""

from __future__ import annotations

import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from harness.services import PostgresServer, free_port
from server.domain.auth import make_user_token
from storage import migrate
from storage.database import default_sqlite_url

COMMAND = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "agency-messaging")
HEAD = migrate.head_revision(default_sqlite_url())
SECRET = secrets.token_urlsafe(32)
SERVICE_TOKEN = secrets.token_urlsafe(32)
LINK = re.compile(r"\S+/login#token=([A-Za-z0-9_.-]+)\S*")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any AM_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AM_")}
    env.update(extra)
    return env


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sqlite_scalar(path: Path, query: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchone()[0]


def demo_tokens(stdout: str) -> list[str]:
    return LINK.findall(stdout)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A directory where `agency-messaging demo` has run once."""
    result = run(tmp_path, "demo")
    assert result.returncode == 0, result.stderr
    (tmp_path / "demo.out").write_text(result.stdout)
    return tmp_path


# --- migrate ----------------------------------------------------------------------------


def test_migrate_creates_the_default_sqlite_database_at_head(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    database = tmp_path / "var" / "agency-messaging.db"
    assert database.is_file()
    assert HEAD is not None
    assert sqlite_scalar(database, "SELECT version_num FROM alembic_version") == HEAD
    tables = {
        row[0]
        for row in sqlite3.connect(database).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert {"messages", "threads", "candidates", "events", "read_markers"} <= tables
    # Again: a no-op that still succeeds.
    again = run(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr
    assert sqlite_scalar(database, "SELECT version_num FROM alembic_version") == HEAD


# --- serve refuses to start -------------------------------------------------------------


def test_serve_refuses_an_unmigrated_postgres_database(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    name = f"am_cli_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    port = free_port()
    env = clean_env(
        AM_DATABASE_URL=postgres.url(name), AM_SECRET=SECRET, AM_SERVICE_TOKEN=SERVICE_TOKEN
    )
    # A server that started serving would never exit: the timeout would fail the test.
    result = run(tmp_path, "serve", "--port", str(port), env=env, timeout=30)
    assert result.returncode != 0
    assert "agency-messaging migrate" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


@pytest.mark.parametrize("secret", [None, "short"])
def test_serve_without_a_secret_is_a_configuration_error(
    tmp_path: Path, secret: str | None
) -> None:
    env = clean_env(AM_SERVICE_TOKEN=SERVICE_TOKEN)
    if secret is not None:
        env["AM_SECRET"] = secret
    result = run(tmp_path, "serve", "--port", str(free_port()), env=env, timeout=30)
    assert result.returncode != 0
    assert "AM_SECRET" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "demo.env").exists()


def test_serve_outside_demo_mode_never_uses_the_demo_secrets(demo_dir: Path) -> None:
    """var/demo.env exists, but without AM_DEMO=1 `serve` and `worker` refuse to start."""
    for args in (("serve", "--port", str(free_port())), ("worker",)):
        result = run(demo_dir, *args, env=clean_env(), timeout=30)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "AM_SECRET" in result.stderr
        assert "AM_DEMO=1" in result.stderr
        assert "Traceback" not in result.stderr
    demo_secret = dict(
        line.split("=", 1) for line in (demo_dir / "var" / "demo.env").read_text().splitlines()
    )["AM_SECRET"]
    result = run(demo_dir, "serve", env=clean_env(AM_SECRET=demo_secret), timeout=30)
    assert result.returncode == 2
    assert "AM_SERVICE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_demo_flag_is_a_configuration_error(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", env=clean_env(AM_DEMO="maybe"), timeout=30)
    assert result.returncode == 2
    assert "AM_DEMO must be 1 or 0" in result.stderr
    assert "Traceback" not in result.stderr


def wait_healthy(process: subprocess.Popen[str], base: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no /healthz 200 within 20 s"
        time.sleep(0.1)


@dataclass
class Served:
    base: str
    demo_output: str


@pytest.fixture
def served_production(demo_dir: Path) -> Iterator[Served]:
    """`serve` with its own secrets and no AM_DEMO, next to the demo's var/demo.env."""
    port = free_port()
    log_path = demo_dir / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [COMMAND, "serve", "--port", str(port)],
            cwd=demo_dir,
            env=clean_env(AM_SECRET=SECRET, AM_SERVICE_TOKEN=SERVICE_TOKEN),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(process, base, log_path)
            yield Served(base, (demo_dir / "demo.out").read_text())
        finally:
            process.kill()
            process.wait(timeout=10)


def test_production_serves_the_client_and_the_api_but_no_demo_pages(
    served_production: Served,
) -> None:
    with httpx.Client(base_url=served_production.base, timeout=5) as client:
        for path in ("/", "/candidates/c1", "/login"):
            assert client.get(path).status_code == 404, path
        script = client.get("/static/am-client.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert client.get("/api/v1/me").status_code == 401
        # Tokens signed with the demo's secret are refused: it never read var/demo.env.
        demo_token = demo_tokens(served_production.demo_output)[0]
        signed_in = client.post("/api/v1/session", json={"token": demo_token})
        assert signed_in.status_code == 401, signed_in.text
        mine = make_user_token(SECRET, "acme", "mia")
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {mine}"})
        assert me.status_code == 200, me.text
        assert me.json()["id"] == "mia"
        # The serving process kept what start-up built out of the garbage collector's walks.
        metrics = client.get("/metrics").text
        (frozen,) = [line for line in metrics.splitlines() if line.startswith("am_gc_frozen")]
        assert float(frozen.split()[-1]) > 10_000, frozen


# --- demo -------------------------------------------------------------------------------


def test_demo_provisions_users_and_prints_login_links_idempotently(demo_dir: Path) -> None:
    env_file = demo_dir / "var" / "demo.env"
    assert env_file.is_file()
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert len(settings.get("AM_SECRET", "")) >= 16
    assert len(settings.get("AM_SERVICE_TOKEN", "")) >= 16

    output = (demo_dir / "demo.out").read_text()
    tokens = demo_tokens(output)
    assert len(tokens) >= 5, output
    database = demo_dir / "var" / "agency-messaging.db"
    kinds = []
    for token in tokens:
        claims = jwt.decode(token, settings["AM_SECRET"], algorithms=["HS256"])
        with sqlite3.connect(database) as conn:
            row = conn.execute(
                "SELECT users.kind FROM users JOIN orgs ON orgs.pk = users.org_pk "
                "WHERE orgs.ext_id = ? AND users.ext_id = ?",
                (claims["org"], claims["sub"]),
            ).fetchone()
        assert row is not None, f"login link for an unprovisioned user: {claims}"
        kinds.append(row[0])
    assert kinds.count("member") >= 3
    assert kinds.count("agency") >= 2

    messages = sqlite_scalar(database, "SELECT count(*) FROM messages")
    threads = sqlite_scalar(database, "SELECT count(*) FROM threads")
    assert isinstance(messages, int) and messages > 0

    again = run(demo_dir, "demo")
    assert again.returncode == 0, again.stderr
    assert len(demo_tokens(again.stdout)) == len(tokens)
    assert sqlite_scalar(database, "SELECT count(*) FROM messages") == messages
    assert sqlite_scalar(database, "SELECT count(*) FROM threads") == threads
    # The secrets are made once and kept.
    assert (
        dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        == settings
    )


# --- serve the demo ---------------------------------------------------------------------


@pytest.fixture
def served_demo(demo_dir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    log = (demo_dir / "serve.log").open("w")
    process = subprocess.Popen(
        [COMMAND, "serve", "--port", str(port)],
        cwd=demo_dir,
        env=clean_env(AM_DEMO="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_serve_runs_the_demo_and_stops_cleanly_on_sigterm(
    demo_dir: Path, served_demo: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = served_demo
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, (demo_dir / "serve.log").read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no /healthz 200 within 20 s"
        time.sleep(0.1)

    token = demo_tokens((demo_dir / "demo.out").read_text())[0]
    with httpx.Client(base_url=base, timeout=5) as client:
        session = client.post("/api/v1/session", json={"token": token})
        assert session.status_code == 200, session.text
        cookie = session.headers.get("set-cookie", "")
        assert "httponly" in cookie.lower()
        assert client.cookies, "no session cookie was set"
        me = client.get("/api/v1/me")  # the cookie alone, no bearer header
        assert me.status_code == 200, me.text
        claims = jwt.decode(token, options={"verify_signature": False})
        assert me.json()["id"] == claims["sub"]
        assert me.json()["org"] == claims["org"]
    assert httpx.get(f"{base}/api/v1/me", timeout=5).status_code == 401

    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=15)
    log = (demo_dir / "serve.log").read_text()
    # uvicorn shuts down gracefully, then re-raises the signal it caught so that a
    # supervisor sees "terminated by SIGTERM": either exit status is a clean stop.
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log
    assert "Application shutdown complete" in log, log


def test_the_demo_server_serves_the_demo_pages_at_its_own_address(
    demo_dir: Path, served_demo: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = served_demo
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base, demo_dir / "serve.log")
    with httpx.Client(base_url=base, timeout=5) as client:
        for path in ("/", "/candidates/c1", "/login"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
        # Its public URL follows the port served: a page opened at http://localhost:PORT
        # (where the printed links point) counts as the server's own origin.
        token = demo_tokens((demo_dir / "demo.out").read_text())[0]
        own = client.post(
            "/api/v1/session",
            json={"token": token},
            headers={"Origin": f"http://localhost:{port}"},
        )
        assert own.status_code == 200, own.text
        elsewhere = client.post(
            "/api/v1/session", json={"token": token}, headers={"Origin": "http://localhost:1"}
        )
        assert elsewhere.status_code == 403, elsewhere.text


def test_demo_links_point_at_the_port_served(tmp_path: Path) -> None:
    result = run(tmp_path, "demo", "--port", "8765")
    assert result.returncode == 0, result.stderr
    links = re.findall(r"\S+/login#\S+", result.stdout)
    assert len(links) >= 5, result.stdout
    assert all(link.startswith("http://localhost:8765/login#token=") for link in links), links

    # An address set by the operator (a proxy in front) wins over the port.
    again = run(
        tmp_path,
        "demo",
        "--port",
        "8765",
        env=clean_env(AM_PUBLIC_URL="https://demo.example.com"),
    )
    assert again.returncode == 0, again.stderr
    links = re.findall(r"\S+/login#\S+", again.stdout)
    assert links and all(link.startswith("https://demo.example.com/login#") for link in links)


def test_the_demo_keeps_its_secrets_under_the_var_dir(tmp_path: Path) -> None:
    var_dir = tmp_path / "elsewhere"
    result = run(tmp_path, "demo", env=clean_env(AM_VAR_DIR=str(var_dir)))
    assert result.returncode == 0, result.stderr
    secrets_file = var_dir / "demo.env"
    assert "AM_SECRET=" in secrets_file.read_text()
    assert not (tmp_path / "var" / "demo.env").exists()
    (token,) = demo_tokens(result.stdout)[:1]
    settings = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines())
    assert jwt.decode(token, settings["AM_SECRET"], algorithms=["HS256"])["org"] == "acme"
