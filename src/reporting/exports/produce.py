"""One claimed export, end to end: read under the requester's stored scope (RLS applies), render
to a temp file (streamed), upload under the deterministic key, mark it ready only while still
holding the lease (fenced by the attempt number), and queue its notice in the same transaction.

While it is produced, a heartbeat thread keeps pushing the lease out from a connection of its
own; a worker that dies stops the heartbeat, the lease runs out and another worker takes the
export again (a retake overwrites the same key: one object per export). A storage error is
retried once in place; if the store is still down, the export is left to be taken again
once its lease runs out, as a dead worker's is (an outage of a minute does not fail it). Either
way an export is claimed at most REPORTING_EXPORT_MAX_ATTEMPTS times: then it fails, with a
clear `error`.
"""

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import psycopg

from reporting import metrics
from reporting.db.engine import apply_scope, connect
from reporting.exports import content, queries
from reporting.exports.queries import ClaimedExport
from reporting.exports.render.csv import render_csv
from reporting.exports.render.pdf import render_pdf
from reporting.exports.render.texts import texts_for
from reporting.exports.render.xlsx import TooManyRows, render_xlsx
from reporting.notify import outbox
from reporting.notify.notice import ExportNotice, Failure
from reporting.observability import request_id_var
from reporting.settings import Settings
from reporting.storage import ObjectStore, StorageError, content_type_for, export_key

log = logging.getLogger(__name__)

UPLOAD_TRIES = 2  # in place, for a blip; a longer outage waits a lease (_retry_later)
UPLOAD_BACKOFF_SECS = 0.5
STORAGE_FAILED = (
    "storage unavailable: the file could not be stored (the export worker's log says why)"
)
STORAGE_RETRYING = "storage unavailable: the file could not be stored yet; it will be tried again"


@dataclass(frozen=True, slots=True)
class Outcome:
    export_id: str
    format: str
    # lost: another worker took the lease over; retrying: left for a later claim (the store is down)
    status: Literal["ready", "failed", "lost", "retrying"]
    error: str | None = None


# --- one export --------------------------------------------------------------------------------


def _render(conn: psycopg.Connection, job: ClaimedExport, path: Path) -> str:
    """Inside a transaction under the requester's scope: write the file; returns the group's
    name."""
    header = content.read_header(conn, job.group_id, job.filters)
    generated_at = datetime.now(UTC)
    texts = texts_for(job.locale)
    if job.format == "csv":
        render_csv(content.iter_csv_records(conn, job.group_id, job.filters), path)
    elif job.format == "xlsx":
        render_xlsx(
            content.iter_rows(conn, job.group_id, job.filters),
            path,
            header=header,
            filters=job.filters,
            kpis=content.read_kpis(conn, job.group_id, job.filters),
            generated_at=generated_at,
            texts=texts,
        )
    else:
        render_pdf(
            path,
            header=header,
            filters=job.filters,
            kpis=content.read_kpis(conn, job.group_id, job.filters),
            topics=content.read_topic_summaries(conn, job.group_id, job.filters),
            students=content.read_student_summaries(conn, job.group_id, job.filters),
            generated_at=generated_at,
            texts=texts,
        )
    return header.group_name


def _upload(store: ObjectStore, key: str, path: Path) -> None:
    """Upload, retrying a store that is briefly down; StorageError after the last try."""
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            store.put_file(key, path, content_type=content_type_for(path.name))
            return
        except StorageError as error:
            if attempt == UPLOAD_TRIES:
                raise
            log.warning("upload failed (try %d of %d): %s", attempt, UPLOAD_TRIES, error)
            time.sleep(UPLOAD_BACKOFF_SECS * 2 ** (attempt - 1))


class _Heartbeat:
    """Keeps the lease of the export in hand alive from its own connection and thread."""

    def __init__(self, url: str, job: ClaimedExport, lease_seconds: float) -> None:
        self._url, self._job, self._lease = url, job, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="export-lease", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        interval = max(self._lease / 3, 0.05)
        try:
            with connect(self._url) as conn:
                while not self._stop.wait(interval):
                    if not queries.renew_lease(conn, self._job, lease_seconds=self._lease):
                        log.warning("the lease of export %s was taken over", self._job.id)
                        return
        except psycopg.Error as error:  # the export goes on; a lost lease is fenced later
            log.warning("cannot renew the lease of export %s: %s", self._job.id, error)


def _notice(
    job: ClaimedExport,
    *,
    group_name: str,
    status: Literal["ready", "failed"],
    download_url: str | None = None,
    url_expires_at: datetime | None = None,
    error: str | None = None,
    failure: Failure | None = None,
) -> ExportNotice:
    return ExportNotice(
        export_id=str(job.id),
        group_id=job.group_id,
        group_name=group_name,
        format=job.format,
        status=status,
        download_url=download_url,
        url_expires_at=url_expires_at,
        error=error,
        failure=failure,
        email=job.notify.email,
        telegram_chat_id=job.notify.telegram_chat_id,
        locale=job.locale,
        request_id=job.request_id,
    )


def _fail(
    conn: psycopg.Connection,
    settings: Settings,
    job: ClaimedExport,
    error: str,
    failure: Failure,
    group_name: str | None = None,
) -> Outcome:
    """Mark the export failed with `error` (what the API and the webhook say) and announce it;
    the notice names the group as every other notice does, and says why in the reader's words."""
    with conn.transaction():
        held = queries.mark_failed(conn, job, error=error)
        if held:
            name = group_name or queries.group_name(conn, job.group_id) or job.group_id
            notice = _notice(job, group_name=name, status="failed", error=error, failure=failure)
            outbox.enqueue(conn, notice, settings.notify)
    if not held:
        return Outcome(str(job.id), job.format, "lost")
    metrics.exports_failed_total.labels(job.format).inc()
    # error: the runbooks look for it (ExportsNotGenerated, ExportWorkerTickFailed)
    log.error("export %s failed: %s", job.id, error, extra={"export_id": str(job.id)})
    return Outcome(str(job.id), job.format, "failed", error)


def _retry_later(conn: psycopg.Connection, settings: Settings, job: ClaimedExport) -> Outcome:
    """The store is down: the export waits a lease for another claim (by any worker), saying so."""
    lease = settings.exports.lease_seconds
    with conn.transaction():
        held = queries.retry_after_lease(conn, job, lease_seconds=lease, error=STORAGE_RETRYING)
    if not held:
        return Outcome(str(job.id), job.format, "lost")
    log.warning(
        "export %s is taken again in %s s (attempt %d of %d)",
        job.id,
        f"{lease:g}",
        job.attempt,
        settings.exports.max_attempts,
        extra={"export_id": str(job.id)},
    )
    return Outcome(str(job.id), job.format, "retrying", STORAGE_RETRYING)


def produce(
    conn: psycopg.Connection, url: str, settings: Settings, store: ObjectStore, job: ClaimedExport
) -> Outcome:
    """Produce one claimed export end to end; never raises for a problem of the export itself."""
    started = time.perf_counter()
    token = request_id_var.set(job.request_id)
    extra = {"export_id": str(job.id), "format": job.format, "attempt": job.attempt}
    try:
        log.info("producing export %s", job.id, extra=extra)
        if job.attempt > settings.exports.max_attempts:
            return _fail(
                conn,
                settings,
                job,
                f"gave up after {job.attempt - 1} attempts: the last one's export worker"
                " stopped while producing it",
                "worker_stopped",
            )
        group_name: str | None = None
        try:
            key = export_key(settings.storage.prefix, job.group_id, str(job.id), job.format)
        except ValueError as error:  # a group id that cannot be a storage path segment
            return _fail(conn, settings, job, f"cannot export: {error}", "internal")
        try:
            with (
                tempfile.TemporaryDirectory(prefix="export-") as tmp,
                _Heartbeat(url, job, settings.exports.lease_seconds),
            ):
                path = Path(tmp) / f"{job.id}.{job.format}"
                with conn.transaction():
                    apply_scope(conn, job.scope)
                    content.prepare_read(conn)
                    group_name = _render(conn, job, path)
                _upload(store, key, path)
        except StorageError as error:
            # Where the store is and how it failed is for the operator, not for the requester.
            log.warning("cannot store export %s: %s", job.id, error, extra=extra)
            if job.attempt < settings.exports.max_attempts:
                return _retry_later(conn, settings, job)
            return _fail(conn, settings, job, STORAGE_FAILED, "storage", group_name)
        except content.GroupNotVisible as error:
            return _fail(conn, settings, job, f"cannot export: {error}", "not_visible", group_name)
        except TooManyRows as error:
            return _fail(conn, settings, job, f"cannot export: {error}", "too_large", group_name)
        except psycopg.OperationalError:
            raise  # the database is gone: the lease runs out and the export is retaken
        except Exception as error:
            log.exception("export %s crashed", job.id, extra=extra)
            return _fail(
                conn,
                settings,
                job,
                f"internal error while producing the export ({type(error).__name__})",
                "internal",
                group_name,
            )
        with conn.transaction():
            expires_at = queries.mark_ready(
                conn, job, storage_key=key, ttl_hours=settings.exports.ttl_hours
            )
            if expires_at is not None:
                # Without a link: each delivery signs its own (deliver_notifications).
                notice = _notice(job, group_name=group_name, status="ready")
                outbox.enqueue(conn, notice, settings.notify)
        if expires_at is None:
            log.warning("export %s was taken over by another worker", job.id, extra=extra)
            return Outcome(str(job.id), job.format, "lost")
        elapsed = time.perf_counter() - started
        metrics.exports_generated_total.labels(job.format).inc()
        metrics.export_duration_seconds.labels(job.format).observe(elapsed)
        log.info("export %s ready in %.3f s", job.id, elapsed, extra=extra)
        return Outcome(str(job.id), job.format, "ready")
    finally:
        request_id_var.reset(token)
