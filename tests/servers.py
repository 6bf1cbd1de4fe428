"""Real servers for tests, each bound to 127.0.0.1 on a free port, with pytest fixtures.

- `S3Server`: moto's S3 server (buckets, put/get/delete, pre-signed GETs; moto does *not* check
  a pre-signed link's signature or expiry, so assert those from the link itself).
- `SmtpServer`: an aiosmtpd server that keeps every message it receives, parsed with the default
  policy (decoded Cyrillic subjects), optionally requiring a login.
- `HttpCapture`: a threaded HTTP server that records every request (webhooks, the Telegram bot
  API) and can be told to fail the next N requests.

Use them as context managers, or through the fixtures below. To use the fixtures in a test
package, import them into its conftest.py:

    from tests.servers import http_capture, s3_bucket, s3_server, smtp_server  # noqa: F401

Typical wiring:

    storage = s3_server.storage_settings(s3_bucket)               # StorageSettings for it
    notify = NotifySettings(
        REPORTING_SMTP_HOST="127.0.0.1", REPORTING_SMTP_PORT=smtp_server.port,
        REPORTING_WEBHOOK_URL=http_capture.url("/hook"), REPORTING_WEBHOOK_SECRET="…",
        REPORTING_TELEGRAM_BOT_TOKEN="123:abc", REPORTING_TELEGRAM_CHAT_ID="42",
        REPORTING_TELEGRAM_API_BASE=http_capture.url(),
    )
    http_capture.fail_next(2)                                     # two 503s, then 200s
    mails = smtp_server.wait_for(1)                               # [ReceivedMail]
"""

import email
import email.policy
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import pytest

from reporting.settings import StorageSettings

S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key"
S3_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (also: a 'down' endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class _Server:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- S3 (moto) ---------------------------------------------------------------------------------


class S3Server(_Server):
    """moto's S3 endpoint in a thread: `endpoint`, `client()`, `create_bucket()`."""

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4), for setting up and checking."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_settings(self, bucket: str, prefix: str = "") -> StorageSettings:
        """The OBJECT_STORAGE_* settings that point the service at `bucket` on this server."""
        return StorageSettings(
            OBJECT_STORAGE_ENDPOINT=self.endpoint,
            OBJECT_STORAGE_BUCKET=bucket,
            OBJECT_STORAGE_ACCESS_KEY=S3_ACCESS_KEY,
            OBJECT_STORAGE_SECRET_KEY=S3_SECRET_KEY,
            OBJECT_STORAGE_REGION=S3_REGION,
            OBJECT_STORAGE_PREFIX=prefix,
        )

    def get_object(self, bucket: str, key: str) -> tuple[bytes, str]:
        """The object's bytes and Content-Type."""
        response = self.client().get_object(Bucket=bucket, Key=key)
        return response["Body"].read(), response["ContentType"]


# --- SMTP (aiosmtpd) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage  # parsed with email.policy.default: headers come back decoded
    login: str | None  # the user that logged in, if any
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        """The text/plain body, decoded."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "the message has no text/plain part"
        return str(part.get_content())

    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return None if part is None else str(part.get_content())


class SmtpServer(_Server):
    """An SMTP server that accepts everything and keeps it in `messages`.

    With `users={"name": "password"}` it offers AUTH (without TLS, for tests) and records who
    logged in; a wrong password is refused with 535.
    """

    def __init__(self, port: int | None = None, *, users: dict[str, str] | None = None) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.messages: list[ReceivedMail] = []
        self._lock = threading.Lock()
        self._users = users
        server = self

        class Handler:
            async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:
                raw: bytes = envelope.original_content
                login = getattr(session.auth_data, "login", None)
                mail = ReceivedMail(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=email.message_from_bytes(raw, policy=email.policy.default),
                    login=login.decode() if isinstance(login, bytes) else login,
                    raw=raw,
                )
                with server._lock:
                    server.messages.append(mail)
                return "250 OK"

        def authenticate(
            _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and users is not None
                and users.get(data.login.decode()) == data.password.decode()
            )
            # handled=False: aiosmtpd then answers 535 itself (True would leave the client hanging)
            return AuthResult(success=ok, handled=False, auth_data=data)

        self._controller = Controller(
            Handler(),
            hostname=self.host,
            port=self.port,
            authenticator=authenticate if users else None,
            auth_require_tls=False,
            enable_SMTPUTF8=True,
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, count: int = 1, timeout: float = 5) -> list[ReceivedMail]:
        """Block until at least `count` messages arrived; returns all of them."""
        _wait_until(lambda: len(self.messages) >= count, timeout, f"{count} e-mail(s)")
        with self._lock:
            return list(self.messages)


# --- HTTP capture (webhooks, Telegram) ---------------------------------------------------------


@dataclass(frozen=True)
class CapturedRequest:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int  # the status the server answered with

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Plan:
    status: int = 200
    body: bytes = b'{"ok": true, "result": {}}'
    content_type: str = "application/json"
    fail_count: int = 0
    fail_status: int = 503
    fail_body: bytes = b'{"ok": false, "description": "Service Unavailable"}'
    fail_headers: dict[str, str] = field(default_factory=dict)


class HttpCapture(_Server):
    """Records every request; answers 200 `{"ok": true, "result": {}}` (what the Telegram bot
    API says) unless told otherwise with `respond()` or `fail_next()`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[CapturedRequest] = []
        self._lock = threading.Lock()
        self._plan = _Plan()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def respond(
        self, status: int = 200, body: bytes | str = b"{}", content_type: str = "application/json"
    ) -> None:
        """Answer every later request with this (after any planned failures)."""
        with self._lock:
            self._plan.status = status
            self._plan.body = body.encode() if isinstance(body, str) else body
            self._plan.content_type = content_type

    def fail_next(
        self,
        count: int,
        status: int = 503,
        body: bytes | str = b'{"ok": false, "description": "Service Unavailable"}',
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `count` requests with `status` (and `headers`, e.g. Retry-After)."""
        with self._lock:
            self._plan.fail_count = count
            self._plan.fail_status = status
            self._plan.fail_body = body.encode() if isinstance(body, str) else body
            self._plan.fail_headers = dict(headers or {})

    def wait_for(self, count: int = 1, timeout: float = 5) -> list[CapturedRequest]:
        """Block until at least `count` requests arrived; returns all of them."""
        _wait_until(lambda: len(self.requests) >= count, timeout, f"{count} HTTP request(s)")
        with self._lock:
            return list(self.requests)

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        """Record the request and decide the answer (one planned failure used up, if any)."""
        with self._lock:
            plan = self._plan
            if plan.fail_count > 0:
                plan.fail_count -= 1
                answer = _Answer(plan.fail_status, plan.fail_body, headers=plan.fail_headers)
            else:
                answer = _Answer(plan.status, plan.body, plan.content_type)
            self.requests.append(CapturedRequest(method, path, headers, body, answer.status))
            return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without TCP_NODELAY the second waits for
            # the client's delayed ACK (~40 ms a request on a kept-alive connection).
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = capture._answer(self.command, self.path, headers, body)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session; give each test its own bucket (`s3_bucket`)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def http_capture() -> Iterator[HttpCapture]:
    with HttpCapture() as server:
        yield server
