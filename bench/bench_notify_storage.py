"""Signing links and draining the notification outbox.

Targets (issue): signing a download link costs < 1 ms (GET /stats/exports signs afresh on every
read), checking a local link < 0.1 ms, and one export worker drains >= 200 webhook
notifications/s and >= 50 e-mails/s to local receivers, each sent exactly once with two workers.

Everything is real and local: embedded PostgreSQL in a temp dir, moto's S3 server, aiosmtpd,
an HTTP capture server (tests/servers.py). Bounded: a few seconds in all.

    .venv/bin/python bench/bench_notify_storage.py [--notices 1000] [--emails 200]
"""

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.servers

from tests.servers import HttpCapture, S3Server, SmtpServer

from reporting.db import embedded, schema
from reporting.notify.outbox import ExportNotice, deliver_due, enqueue
from reporting.settings import NotifySettings
from reporting.storage.local import LocalStore
from reporting.storage.s3 import S3Store

SIGN_US_TARGET, VERIFY_US_TARGET = 1000.0, 100.0
WEBHOOK_RATE_TARGET, EMAIL_RATE_TARGET = 200.0, 50.0


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def bench_signing(tmp: Path) -> list[tuple[str, float, float]]:
    expires = datetime.now(UTC) + timedelta(hours=24)
    local = LocalStore(tmp / "files", b"s" * 32, link_ttl=timedelta(hours=1))
    key = "exports/7А/0b1c2d3e-0000-4000-8000-000000000000.pdf"
    (local.root / "exports" / "7А").mkdir(parents=True)
    (local.root / key).write_bytes(b"%PDF-")
    link = local.signed_url(key, expires_at=expires, filename="Отчёт 7А.pdf")
    query = {name: values[0] for name, values in parse_qs(urlsplit(link).query).items()}
    fn, sig, exp = query["fn"], query["sig"], query["expires"]
    with S3Server() as server:
        s3 = S3Store(server.storage_settings(server.create_bucket()), link_ttl=timedelta(hours=1))
        results = [
            (
                "S3 pre-signed GET (SigV4)",
                per_call_us(
                    lambda: s3.signed_url(key, expires_at=expires, filename="Отчёт 7А.pdf"), 2000
                ),
                SIGN_US_TARGET,
            ),
        ]
    results += [
        (
            "local HMAC link: sign",
            per_call_us(lambda: local.signed_url(key, expires_at=expires, filename=fn), 20000),
            SIGN_US_TARGET,
        ),
        (
            "local HMAC link: check (signature, expiry, path)",
            per_call_us(
                lambda: local.open_link(key, expires=exp, filename=fn, signature=sig), 20000
            ),
            VERIFY_US_TARGET,
        ),
    ]
    return results


def queue(url: str, settings: NotifySettings, count: int, *, email: str | None) -> None:
    with psycopg.connect(url) as conn:
        ids = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters,"
                " format) SELECT 'bench', '{}', '7a', '{}', 'pdf' FROM generate_series(1, %s)"
                " RETURNING id",
                (count,),
            ).fetchall()
        ]
        for export_id in ids:
            notice = ExportNotice(
                export_id=export_id,
                group_id="7a",
                group_name="7А",
                format="pdf",
                status="ready",
                download_url="https://reports.example/files/x.pdf?sig=1",
                url_expires_at=datetime.now(UTC) + timedelta(hours=1),
                email=email,
            )
            enqueue(conn, notice, settings)


def drain(url: str, settings: NotifySettings, workers: int) -> tuple[int, float]:
    sent: list[int] = []

    def worker() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while (report := deliver_due(conn, settings, limit=50)).attempted:
                sent.append(report.sent)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return sum(sent), time.perf_counter() - started


def bench_outbox(url: str, notices: int, emails: int) -> list[tuple[str, float, float, str]]:
    results = []
    with HttpCapture() as hook, SmtpServer() as smtp:
        for workers in (1, 2):
            settings = NotifySettings(
                REPORTING_WEBHOOK_URL=hook.url("/hook"), REPORTING_WEBHOOK_SECRET="w" * 32
            )
            before = len(hook.requests)
            queue(url, settings, notices, email=None)
            sent, elapsed = drain(url, settings, workers)
            received = len(hook.requests) - before
            exact = "exactly once" if sent == received == notices else f"{received} received!"
            results.append(
                (f"webhook, {workers} worker(s)", sent / elapsed, WEBHOOK_RATE_TARGET, exact)
            )
        settings = NotifySettings(REPORTING_SMTP_HOST=smtp.host, REPORTING_SMTP_PORT=smtp.port)
        queue(url, settings, emails, email="teacher@school.example")
        sent, elapsed = drain(url, settings, 1)
        exact = "exactly once" if sent == len(smtp.messages) == emails else "MISMATCH"
        results.append(
            ("e-mail (SMTP session each), 1 worker", sent / elapsed, EMAIL_RATE_TARGET, exact)
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=1000)
    parser.add_argument("--emails", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    ok = True
    try:
        print("link signing and checking (per call)")
        for name, micros, target in bench_signing(tmp):
            good = micros <= target
            ok &= good
            print(
                f"  {name:<50} {micros:8.1f} µs   target <= {target:.0f} µs   {'ok' if good else 'MISSED'}"
            )

        url = embedded.server_uri(tmp / "pg")
        schema.upgrade(url)
        print(f"outbox delivery ({args.notices} webhooks per run, {args.emails} e-mails)")
        for name, rate, target, exact in bench_outbox(url, args.notices, args.emails):
            good = rate >= target and exact == "exactly once"
            ok &= good
            print(
                f"  {name:<50} {rate:8.0f} /s   target >= {target:.0f} /s   {exact}   {'ok' if good else 'MISSED'}"
            )
    finally:
        embedded.stop_server(tmp / "pg", force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
