"""A bad or missing setting stops the real console script at start with one line naming the
variable (CONTRACT §4); good ones, from the environment or `.env`, are read."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from reporting.auth.tokens import TokenVerifier
from reporting.settings import SettingsError, load_settings
from tests.conftest import JWT_SECRET, _with_database

REPORTING = str(Path(sys.executable).parent / "reporting")


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A clean environment: nothing inherited that could satisfy or break a setting."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "REPORTING_DATA_DIR": str(tmp_path / "data"),
        "REPORTING_JWT_SECRET": JWT_SECRET,
        **variables,
    }


def _reporting(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`reporting ARGS` run to its end; a variable set to "<unset>" is left out."""
    env = {key: value for key, value in env.items() if value != "<unset>"}
    return subprocess.run(
        [REPORTING, *args],
        env=env,
        cwd=tmp_path,  # no .env of the developer's checkout
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variables", "variable", "reason"),
    [
        ({"REPORTING_WORKER_INTERVAL_SECS": "abc"}, "REPORTING_WORKER_INTERVAL_SECS", "number"),
        ({"REPORTING_WORKER_INTERVAL_SECS": "0"}, "REPORTING_WORKER_INTERVAL_SECS", "greater"),
        ({"DATABASE_URL": "mysql://db/reporting"}, "DATABASE_URL", "postgresql://"),
        ({"REPORTING_JWT_SECRET": "<unset>"}, "REPORTING_JWT_SECRET", "missing"),
        (
            {
                "REPORTING_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"
            },
            "REPORTING_JWT_PUBLIC_KEY",
            "readable",
        ),
        ({"REPORTING_LEADERBOARD_SIZE": "many"}, "REPORTING_LEADERBOARD_SIZE", "integer"),
        ({"REPORTING_EXPORT_TTL_HOURS": "-1"}, "REPORTING_EXPORT_TTL_HOURS", "greater"),
        ({"REPORTING_ENABLE_LIVE_UPDATES": "maybe"}, "REPORTING_ENABLE_LIVE_UPDATES", "boolean"),
        # Finite and within reason: each of these crashed a process later, not at start.
        ({"REPORTING_WORKER_INTERVAL_SECS": "1e12"}, "REPORTING_WORKER_INTERVAL_SECS", "less"),
        ({"REPORTING_SIGNED_URL_TTL_HOURS": "inf"}, "REPORTING_SIGNED_URL_TTL_HOURS", "168"),
        ({"REPORTING_EXPORT_TTL_HOURS": "inf"}, "REPORTING_EXPORT_TTL_HOURS", "less"),
        ({"DATABASE_URL": "postgresql://u:pw@[bad"}, "DATABASE_URL", "not a valid connection"),
        ({"REPORTING_DATA_DIR": "/etc/hostname/data"}, "REPORTING_DATA_DIR", "not a directory"),
    ],
    ids=[
        "interval-abc",
        "interval-zero",
        "database-url",
        "missing-jwt-secret",
        "garbage-public-key",
        "leaderboard-size",
        "export-ttl",
        "live-updates",
        "interval-huge",
        "signed-url-ttl-inf",
        "export-ttl-inf",
        "database-url-malformed",
        "data-dir-under-a-file",
    ],
)
def test_serve_stops_at_start_with_one_line_naming_the_variable(
    tmp_path: Path, variables: dict[str, str], variable: str, reason: str
) -> None:
    result = _reporting(tmp_path, _env(tmp_path, **variables), "serve", "--port", "1")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert reason in lines[0]
    assert "Traceback" not in result.stderr
    assert "pw@" not in result.stderr  # a password in the URL is not repeated
    assert result.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing was started"


def test_empty_variables_mean_the_defaults_and_log_levels_take_any_case(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("REPORTING_WORKER_INTERVAL_SECS", "")
    monkeypatch.setenv("REPORTING_LOG_LEVEL", "debug")
    settings = load_settings(require_jwt=False)
    assert settings.worker.interval_secs == 3600
    assert settings.log.level == "DEBUG"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["migrate"]])
def test_a_database_that_refuses_stops_the_process_with_one_line(
    tmp_path: Path, server_url: str, command: list[str]
) -> None:
    """A well-formed DATABASE_URL is still a bad setting when its server refuses it."""
    closed = f"postgresql://reporting:s3cret@127.0.0.1:{_free_port()}/reporting"
    unknown = _with_database(server_url, "no_such_database_here")
    for url, reason in ((closed, "Connection refused"), (unknown, "does not exist")):
        result = _reporting(tmp_path, _env(tmp_path, DATABASE_URL=url), *command)

        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: cannot connect to DATABASE_URL (")
        assert reason in lines[0]
        assert "s3cret" not in result.stderr  # the password is not printed
    assert not (tmp_path / "data").exists(), "no embedded server was started instead"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_starts_with_the_same_environment_when_settings_are_good(
    tmp_path: Path, fresh_db_url: str
) -> None:
    port = _free_port()
    env = _env(tmp_path, DATABASE_URL=fresh_db_url, REPORTING_WORKER_INTERVAL_SECS="60")
    process = subprocess.Popen(
        [REPORTING, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_settings_come_from_dotenv_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        f"REPORTING_JWT_SECRET={JWT_SECRET}\nREPORTING_LEADERBOARD_SIZE=25\n"
        "REPORTING_WORKER_INTERVAL_SECS=120\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in ("REPORTING_JWT_SECRET", "REPORTING_LEADERBOARD_SIZE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPORTING_WORKER_INTERVAL_SECS", "30")

    settings = load_settings()

    assert settings.worker.leaderboard_size == 25
    assert settings.worker.interval_secs == 30
    assert settings.auth.jwt_secret is not None
    assert settings.auth.jwt_secret.get_secret_value() == JWT_SECRET


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), True),
        (lambda: ec.generate_private_key(ec.SECP256R1()), True),
        (lambda: ec.generate_private_key(ec.SECP384R1()), False),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), False),
    ],
    ids=["rsa-2048", "ec-p256", "ec-p384", "rsa-1024"],
)
def test_public_key_must_fit_rs256_or_es256(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey],
    accepted: bool,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPORTING_JWT_SECRET", raising=False)
    # escaped newlines, as a one-line environment variable carries them
    monkeypatch.setenv("REPORTING_JWT_PUBLIC_KEY", _pem(key()).replace("\n", "\\n"))

    if accepted:
        assert load_settings().auth.jwt_public_key is not None
    else:
        with pytest.raises(SettingsError, match=r"^invalid setting REPORTING_JWT_PUBLIC_KEY: "):
            load_settings()


def test_a_short_jwt_secret_is_accepted_with_a_warning_and_an_empty_one_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The contract sets no minimum length (the token issuer owns the secret)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPORTING_JWT_SECRET", "secret")
    secret = load_settings().auth.jwt_secret
    assert secret is not None and secret.get_secret_value() == "secret"
    # Logged by the process once its logging is set up: a JSON line like every other.
    result = _reporting(
        tmp_path,
        _env(tmp_path, REPORTING_JWT_SECRET="secret"),
        *("token", "--role", "admin", "--sub", "me"),
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["msg"].startswith("REPORTING_JWT_SECRET is shorter than 32 bytes")

    monkeypatch.setenv("REPORTING_JWT_SECRET", "")
    with pytest.raises(SettingsError, match=r"^missing setting REPORTING_JWT_SECRET: "):
        load_settings()


def test_a_pkcs1_rsa_public_key_is_accepted_and_verifies_tokens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )
    assert pkcs1.startswith("-----BEGIN RSA PUBLIC KEY-----")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPORTING_JWT_SECRET", raising=False)
    monkeypatch.setenv("REPORTING_JWT_PUBLIC_KEY", pkcs1)

    settings = load_settings()
    token = jwt.encode(
        {"sub": "t", "role": "admin", "group_ids": [], "exp": int(time.time()) + 60},
        key,
        algorithm="RS256",
    )
    assert TokenVerifier(settings.auth).verify(token).role == "admin"


@pytest.mark.slow
def test_a_schema_newer_than_the_service_knows_stops_migrate_with_one_line(
    tmp_path: Path, fresh_db_url: str
) -> None:
    """A database a newer version migrated: /readyz says so; migrate said it with a traceback."""
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    result = _reporting(tmp_path, _env(tmp_path, DATABASE_URL=fresh_db_url), "migrate")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: the database's schema is newer than this version of the service knows"
    )
    assert "'0099'" in lines[0]


def test_a_port_out_of_range_is_refused_by_the_command_line(tmp_path: Path) -> None:
    result = _reporting(tmp_path, _env(tmp_path), "serve", "--port", "99999")
    assert result.returncode == 2
    assert "argument --port: must be between 1 and 65535, not 99999" in result.stderr
    assert "Traceback" not in result.stderr
