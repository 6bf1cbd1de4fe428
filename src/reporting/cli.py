"""The console scripts: `reporting` (serve, migrate, seed, ingest, token, demo, db), `reporting-worker`
and `export-worker`. Each builds the settings once and hands them on."""

import argparse
import gc
import logging
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from reporting.locales import LOCALES
from reporting.settings import Settings, SettingsError, load_settings


def _exit_on_sigterm() -> None:
    """SIGTERM becomes a normal exit, so atexit hooks run (the embedded server's handle above all)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _settings(*, require_jwt: bool) -> Settings:
    try:
        settings = load_settings(require_jwt=require_jwt)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    from reporting.observability import configure_logging

    configure_logging(settings.log)
    for warning in settings.warnings():
        logging.getLogger("reporting.settings").warning(warning)
    return settings


def _url(settings: Settings) -> str:
    from reporting.db.engine import database_url

    return database_url(settings.database)


def _migrated_url(settings: Settings) -> str:
    from reporting.db import schema

    url = _url(settings)
    if settings.database.url:
        _require_reachable(url)
    try:
        schema.upgrade(url)
    except schema.UnknownRevision as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return url


def _require_reachable(url: str) -> None:
    """CONTRACT §4: a DATABASE_URL whose server refuses it (down, unknown database, wrong
    password) stops the process with one line naming the variable, not a migration's traceback."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=10, application_name="reporting").close()
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())
        print(
            f"error: cannot connect to DATABASE_URL ({_redacted(url)}): {reason}", file=sys.stderr
        )
        raise SystemExit(2) from None


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# --- reporting ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from reporting.app import create_app

    settings = _settings(require_jwt=True)
    url = _migrated_url(settings)
    app = create_app(settings, url=url)
    # The app's long-lived objects (routes, models, the stats cache's entries later) made every
    # full collection walk them all: 60-70 ms p99 pauses under load (bench/bench_api.py). Freeze
    # what exists now and collect the young generation less often: p99 fell to 8-15 ms.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # uvicorn stops gracefully on SIGTERM, then re-raises it to the handler it found (ours turns
    # it into exit 143): a stop that was asked for and went well exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        # The standard asyncio loop, not uvloop: with 64 connections taking 18 KiB answers,
        # uvloop left ~1% of them waiting 50-450 ms (p99 40-95 ms, max 0.4 s), while asyncio
        # served the same load at the same rate with p99 15 ms, max 19 ms (bench/bench_api.py).
        loop="asyncio",
        http="httptools",
        log_level="warning",
        log_config=None,  # keep our JSON handler: uvicorn's own config logs plain text
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from reporting.db import schema

    settings = _settings(require_jwt=False)
    _migrated_url(settings)
    print(f"schema is at revision {schema.head_revision()}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from reporting.db.engine import connect
    from reporting.ingest.seed import SeedError, SeedSpec, seed

    settings = _settings(require_jwt=False)
    url = _migrated_url(settings)
    spec = SeedSpec(
        students=args.students,
        groups=args.groups,
        topics=args.topics,
        levels=args.levels,
        attempts=args.attempts,
        seed=args.seed,
        until=args.until,
    )
    started = time.perf_counter()
    try:
        with connect(url) as conn:
            result = seed(conn, spec)
    except SeedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    rate = result.attempts / elapsed if elapsed > 0 else 0.0
    print(
        f"seeded {result.groups} groups, {result.students} students, {result.levels} levels, "
        f"{result.topics} topics, {result.attempts} attempts in {elapsed:.1f} s "
        f"({rate:,.0f} attempts/s)"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from reporting.ingest import files

    settings = _settings(require_jwt=False)
    url = _migrated_url(settings)
    path = Path(args.file)
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    try:
        if args.kind == "directory":
            summary = files.ingest_directory_file(url, path)
        else:
            summary = files.ingest_attempts_file(url, path)
    except files.IngestFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the file's transaction rolled back
        print(f"\ninterrupted: nothing of {path} was written", file=sys.stderr)
        return 130
    print(summary)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from reporting.auth.tokens import issue_token

    settings = _settings(require_jwt=False)
    groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
    try:
        token = issue_token(
            settings.auth,
            role=args.role,
            sub=args.sub,
            group_ids=groups,
            ttl_seconds=args.ttl,
            email=args.email,
            locale=args.locale,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from reporting import demo

    return demo.run(host=args.host, port=args.port, students=args.students, secret=_demo_secret())


def _demo_secret() -> str:
    """The demo's JWT secret: the configured one (environment or `.env`), else one kept in the
    configured data dir across runs."""
    settings = _settings(require_jwt=False)
    if settings.auth.jwt_secret is not None:
        return settings.auth.jwt_secret.get_secret_value()
    data_dir = settings.database.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo-jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def cmd_db(args: argparse.Namespace) -> int:
    from reporting.db import embedded

    settings = _settings(require_jwt=False)
    if settings.database.url:
        print("DATABASE_URL is set: the embedded server is not in use", file=sys.stderr)
        return 2
    data_dir = settings.database.data_dir
    if args.action == "stop":
        try:
            stopped = embedded.stop_server(data_dir, force=args.force)
        except embedded.InUse as error:
            print(
                f"error: the embedded PostgreSQL is {error}; stop them first (the last one out"
                " stops the server), or run `reporting db stop --force`",
                file=sys.stderr,
            )
            return 1
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    print(_url(settings))
    if not embedded.users(data_dir):
        print(
            "note: no other process uses the embedded server, so it stops when this command"
            " exits; start `reporting serve` or a worker to keep it running",
            file=sys.stderr,
        )
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a token that has already expired is of no use to anybody."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help says its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _utc_moment(text: str) -> datetime:
    """An argparse type: an ISO date (its midnight) or datetime, read as UTC without an offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or datetime: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _port(text: str) -> int:
    """An argparse type: a TCP port (--port 99999 was a traceback from the socket layer)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reporting", description="Reporting & Analytics service")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        # Each option's help says its default.
        return sub.add_parser(
            name,
            help=help,
            description=help,
            formatter_class=_HelpWithDefaults,
        )

    serve = command("serve", "run the HTTP API and the dashboard")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on")
    serve.set_defaults(func=cmd_serve)

    command("migrate", "create or upgrade the schema (idempotent)").set_defaults(func=cmd_migrate)

    seed = command("seed", "load a deterministic synthetic school into an empty database")
    seed.add_argument("--students", type=int, default=1000, help="students")
    seed.add_argument("--groups", type=int, default=40, help="groups (classes)")
    seed.add_argument("--topics", type=int, default=40, help="topics")
    seed.add_argument("--levels", type=int, default=5, help="levels")
    seed.add_argument("--attempts", type=int, default=100_000, help="attempts in all")
    seed.add_argument("--seed", type=int, default=1, help="random seed: the same school again")
    seed.add_argument(
        "--until",
        type=_utc_moment,
        help="the end of the year of attempts (ISO date or datetime, UTC; default now): with"
        " it, the same options give the same rows on any day",
    )
    seed.set_defaults(func=cmd_seed)

    ingest = command("ingest", "bulk-load directory data or attempts from a file")
    ingest.add_argument(
        "kind",
        choices=["directory", "attempts"],
        help="directory: groups, users, levels, topics; attempts: the students' attempts",
    )
    ingest.add_argument("file", help="directory: FILE.json; attempts: FILE.jsonl or FILE.csv")
    ingest.set_defaults(func=cmd_ingest)

    token = command("token", "print a JWT signed with the configured secret")
    token.add_argument("--role", required=True, choices=["admin", "teacher", "service"])
    token.add_argument("--groups", default="", help="comma-separated group ids")
    token.add_argument("--sub", required=True, help="the subject (who the token is for)")
    token.add_argument("--ttl", type=_positive_int, default=3600, help="lifetime in seconds")
    token.add_argument("--email", help="where export notifications go")
    token.add_argument("--locale", choices=LOCALES, help="the language of notifications")
    token.set_defaults(func=cmd_token)

    demo = command("demo", "embedded database, demo school, API and both workers")
    demo.add_argument("--host", default="127.0.0.1", help="address the API listens on")
    demo.add_argument("--port", type=_port, default=8000, help="port the API listens on")
    demo.add_argument("--students", type=int, default=300, help="students of the demo school")
    demo.set_defaults(func=cmd_demo)

    db = command("db", "the embedded PostgreSQL: print its URL or stop it")
    db.add_argument("action", choices=["url", "stop"])
    db.add_argument(
        "--force", action="store_true", help="stop: even while processes are attached to it"
    )
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _exit_on_sigterm()
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


# --- workers -----------------------------------------------------------------------------------


def _worker_parser(prog: str, description: str, once: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_HelpWithDefaults
    )
    parser.add_argument("--once", action="store_true", help=once)
    parser.add_argument("--metrics-port", type=_port, help="serve /metrics on this port")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics")
    return parser


def reporting_worker(argv: Sequence[str] | None = None) -> int:
    from reporting.stats import worker

    _exit_on_sigterm()  # until worker.run takes over the signals (e.g. during migrations)
    parser = _worker_parser(
        "reporting-worker",
        "the analytics worker: a tick every REPORTING_WORKER_INTERVAL_SECS",
        "run one tick and exit (0: it succeeded, or another worker was ticking)",
    )
    parser.add_argument("--full", action="store_true", help="recompute everything from scratch")
    args = parser.parse_args(argv)
    settings = _settings(require_jwt=False)
    url = _migrated_url(settings)
    return worker.run(
        settings,
        url,
        once=args.once,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        full=args.full,
    )


def export_worker(argv: Sequence[str] | None = None) -> int:
    from reporting.exports import worker

    _exit_on_sigterm()  # until worker.run takes over the signals (e.g. during migrations)
    args = _worker_parser(
        "export-worker",
        "the export worker: produces requested exports as soon as they come",
        "produce what is pending, deliver due notifications, and exit (1 if an export failed)",
    ).parse_args(argv)
    settings = _settings(require_jwt=False)
    url = _migrated_url(settings)
    return worker.run(
        settings,
        url,
        once=args.once,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one of our console scripts from the same environment (used by the demo)."""
    return subprocess.Popen([str(Path(sys.executable).parent / command[0]), *command[1:]], env=env)
