"""The export worker: takes pending exports off the `report_exports` queue and produces them
(each one end to end in exports/produce.py).

- Wake-up: `LISTEN exports_pending` (the API notifies in the inserting transaction), plus a slow
  poll (REPORTING_EXPORT_POLL_SECS) as a safety net and to retake exports whose lease ran out.
- Claim: `FOR UPDATE SKIP LOCKED`, status `processing`, a lease (REPORTING_EXPORT_LEASE_SECS);
  several workers share the queue and each export is produced once.
- Expire: ready exports past `expires_at` lose their object and become `expired`.
- Notify: `ready`/`failed` notices go to the outbox in the same transaction as the status; a
  separate thread delivers them, so a slow or broken channel never holds up an export.

`tick()` does one round (sweep, then every claimable export); `run()` is the loop around it:
metrics, signals (reporting/shutdown.py: SIGTERM finishes the export in hand, then exits 0; a
second signal abandons it, and it is taken again once its lease runs out), `--once`.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import psycopg

from reporting import metrics, shutdown
from reporting.db import channels
from reporting.db.engine import connect
from reporting.exports import queries
from reporting.exports.produce import Outcome, produce
from reporting.exports.service import present
from reporting.notify import outbox
from reporting.notify.notice import ExportNotice
from reporting.settings import Settings
from reporting.storage import ObjectStore, StorageError, build_store

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


@dataclass
class TickResult:
    ready: int = 0
    failed: int = 0
    lost: int = 0
    retrying: int = 0  # left for a later claim: the store was down
    expired: int = 0

    @property
    def ok(self) -> bool:
        """No export failed or had to wait for the store (the alert on error rounds sees an
        outage of the store while it lasts, not only when the exports it delays fail)."""
        return self.failed == 0 and self.retrying == 0

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)


# --- a round -----------------------------------------------------------------------------------


def sweep_expired(conn: psycopg.Connection, store: ObjectStore) -> int:
    """Delete the objects of ready exports past their expiry and mark them expired."""
    swept = 0
    while True:
        with conn.transaction():
            batch = queries.lock_expired_exports(conn, limit=SWEEP_BATCH)
            for export_id, key in batch:
                try:
                    store.delete(key)
                except StorageError as error:  # the API already shows it expired; retry later
                    log.warning("cannot delete expired export %s: %s", export_id, error)
                    continue
                queries.mark_expired(conn, export_id)
                log.info("export expired; its file is deleted", extra={"export_id": str(export_id)})
                swept += 1
        if len(batch) < SWEEP_BATCH:
            return swept


def tick(
    url: str,
    settings: Settings,
    store: ObjectStore,
    *,
    stop: threading.Event | None = None,
    on_finished: Callable[[Outcome], None] | None = None,
) -> TickResult:
    """One round: sweep expired exports, then produce claimable exports until none is left
    (or `stop` is set: the export in hand is finished first)."""
    result = TickResult()
    with connect(url, autocommit=True) as conn:
        result.expired = sweep_expired(conn, store)
        while stop is None or not stop.is_set():
            job = queries.claim_next_export(conn, lease_seconds=settings.exports.lease_seconds)
            if job is None:
                break
            outcome = produce(conn, url, settings, store, job)
            result.add(outcome)
            if on_finished is not None:
                on_finished(outcome)
    return result


def deliver_notifications(url: str, settings: Settings, store: ObjectStore) -> None:
    """Send what is due in the outbox (one batch after another until nothing is due). A ready
    export's link is signed afresh for each attempt, as the API does for each read: a retry an
    hour later carries a link that still works (or none, once the export has expired)."""
    link_ttl = timedelta(hours=settings.exports.signed_url_ttl_hours)
    with connect(url, autocommit=True) as conn:

        def refresh(notice: ExportNotice) -> ExportNotice:
            if notice.status != "ready":
                return notice
            record = queries.export_record(conn, notice.export_id)
            if record is None:
                return replace(notice, download_url=None, url_expires_at=None)
            try:
                view = present(
                    record, store, link_ttl=link_ttl, base_url=settings.exports.public_url
                )
            except StorageError as error:  # the notice still goes out, without a link
                log.warning("cannot sign a link for export %s: %s", record.id, error)
                return replace(notice, download_url=None, url_expires_at=None)
            return replace(
                notice, download_url=view.download_url, url_expires_at=view.url_expires_at
            )

        while outbox.deliver_due(conn, settings.notify, limit=50, refresh=refresh).attempted == 50:
            pass


# --- the loop ----------------------------------------------------------------------------------


class _Notifier:
    """Delivers due notifications in its own thread: woken after each export, and every few
    seconds for retries. Its failures are logged and never reach the exports."""

    def __init__(self, url: str, settings: Settings, store: ObjectStore, interval: float) -> None:
        self._url, self._settings, self._store, self._interval = url, settings, store, interval
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="export-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, _outcome: Outcome | None = None) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                deliver_notifications(self._url, self._settings, self._store)
            except psycopg.OperationalError as error:  # the loop logs the outage too
                log.warning("notifications wait for the database", extra={"error": str(error)})
            except Exception:
                log.exception("notification delivery failed")
            if self._stop.is_set():
                return


def _counted_tick(
    url: str, settings: Settings, store: ObjectStore, stop: threading.Event, notifier: _Notifier
) -> TickResult | None:
    try:
        result = tick(url, settings, store, stop=stop, on_finished=notifier.wake)
    except Exception:
        log.exception("export worker round failed")
        metrics.export_worker_ticks_total.labels("error").inc()
        return None
    metrics.export_worker_ticks_total.labels("success" if result.ok else "error").inc()
    return result


def _wait_for_work(listener: psycopg.Connection, stop: threading.Event, seconds: float) -> None:
    """Until a NOTIFY arrives, `seconds` pass or `stop` is set (checked twice a second)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for _ in listener.notifies(timeout=min(left, 0.5), stop_after=1):
            return


def relative_links_warning(settings: Settings) -> str | None:
    """Why notices will carry links nobody can open, if they will: a local-storage link is built
    on REPORTING_PUBLIC_URL, and the worker has no request whose address it could use instead
    (the requester's Host header is not trusted for mail that may go to anyone)."""
    notify = settings.notify
    if settings.storage.bucket or settings.exports.public_url:
        return None
    if not (notify.smtp_host or notify.telegram_bot_token or notify.webhook_url):
        return None
    return (
        "REPORTING_PUBLIC_URL is not set: the download links in export notifications will be"
        " relative (/files/...); set it to the address users reach the API at"
    )


def run(
    settings: Settings,
    url: str,
    *,
    once: bool,
    metrics_port: int | None,
    metrics_host: str = "127.0.0.1",
) -> int:
    """The `export-worker` command. `--once`: produce what is pending, deliver what is due,
    exit 0 (1 if an export failed). Otherwise loop until SIGTERM/SIGINT, then exit 0."""
    if metrics_port is not None and metrics.serve(metrics_port, metrics_host) is None:
        return 2
    store = build_store(settings)
    if (warning := relative_links_warning(settings)) is not None:
        log.warning(warning)
    try:
        store.check()
    except StorageError as error:
        # Not fatal: the store may come up later, and each export says why it failed meanwhile.
        log.warning("object storage is not usable yet", extra={"error": str(error)})
    stop = threading.Event()
    notifier = _Notifier(url, settings, store, interval=min(settings.exports.poll_seconds, 2.0))
    interrupted = False
    try:
        with shutdown.stop_on_signals(stop, finishing="the export"):
            if once:
                result = _counted_tick(url, settings, store, stop, notifier)
                try:
                    deliver_notifications(url, settings, store)
                except Exception:
                    log.exception("notification delivery failed")
                return 0 if result is not None and result.ok else 1
            notifier.start()
            log.info("export worker started")
            _loop(url, settings, store, stop, notifier)
    except KeyboardInterrupt:
        interrupted = True
        log.warning(
            "export worker stopped by a second signal; an export it was producing is taken"
            " again once its lease runs out"
        )
        return 1 if once else 0
    finally:
        # After a second signal, a delivery in progress is not waited for either: the outbox
        # keeps its row, and the next worker sends it (at least once).
        notifier.stop(timeout=0 if interrupted else 10)
    log.info("export worker stopped")
    return 0


# Retries of a lost database: 1 s, doubling up to this.
MAX_RECONNECT_DELAY_SECS = 10.0


def _loop(
    url: str, settings: Settings, store: ObjectStore, stop: threading.Event, notifier: _Notifier
) -> None:
    delay = 1.0
    while not stop.is_set():
        try:
            with connect(url, autocommit=True) as listener:
                listener.execute(f"LISTEN {channels.EXPORTS_PENDING}")
                delay = 1.0
                while not stop.is_set():
                    _counted_tick(url, settings, store, stop, notifier)
                    _wait_for_work(listener, stop, settings.exports.poll_seconds)
        except psycopg.OperationalError as error:
            # A round that could not even start failed: the alert on error rounds must see a
            # database outage (none was counted while the worker waited for it to come back).
            metrics.export_worker_ticks_total.labels("error").inc()
            log.warning(
                "database connection lost; retrying",
                extra={"error": str(error), "retry_in": delay},
            )
            stop.wait(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY_SECS)
