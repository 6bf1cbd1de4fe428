"""Every Prometheus metric of the service, defined once (names fixed by CONTRACT §7)."""

import logging
import sys
from functools import cache
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Analytics worker
# A total and its failures, as Prometheus' instrumentation practices have it: the failed share is
# errors / ticks. A turn skipped because another worker ticks is neither.
reporting_worker_ticks_total = Counter(
    "reporting_worker_ticks_total", "Ticks of the analytics worker, failed ones included."
)
reporting_worker_errors_total = Counter(
    "reporting_worker_errors_total", "Ticks of the analytics worker that failed."
)
reporting_worker_tick_duration_seconds = Histogram(
    "reporting_worker_tick_duration_seconds",
    "Wall time of one analytics tick.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300),
)
analytics_worker_ticks_total = Counter(
    "analytics_worker_ticks_total", "Analytics worker iterations by outcome.", ["status"]
)
# The worker's own state, exported by the analytics worker only (see expose_worker_gauges).
reporting_worker_last_success_timestamp_seconds = Gauge(
    "reporting_worker_last_success_timestamp_seconds",
    "When the last successful tick finished.",
    registry=None,
)
# The duration histogram only sees ticks that ended: this shows one that is still running (a
# tick stuck on a lock raises ReportingWorkerTickRunningLong, deploy/prometheus/alerts.yml).
reporting_worker_tick_started_timestamp_seconds = Gauge(
    "reporting_worker_tick_started_timestamp_seconds",
    "When the running tick started; 0 while no tick runs.",
    registry=None,
)
_WORKER_GAUGES = (
    reporting_worker_last_success_timestamp_seconds,
    reporting_worker_tick_started_timestamp_seconds,
)
reporting_worker_skipped_ticks_total = Counter(
    "reporting_worker_skipped_ticks_total",
    "Ticks skipped because another analytics worker held the lock.",
)

# Export worker
export_worker_ticks_total = Counter(
    "export_worker_ticks_total", "Export worker iterations by outcome.", ["status"]
)
exports_generated_total = Counter(
    "exports_generated_total", "Exports that reached ready, by format.", ["format"]
)
exports_failed_total = Counter(
    "exports_failed_total", "Exports that failed, by format.", ["format"]
)
export_duration_seconds = Histogram(
    "export_duration_seconds",
    "From claim to ready, by format.",
    ["format"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
exports_requested_total = Counter(
    "exports_requested_total", "Export requests accepted by the API, by format.", ["format"]
)
exports_rate_limited_total = Counter(
    "exports_rate_limited_total", "Export requests refused by the rate limit."
)
notifications_sent_total = Counter(
    "notifications_sent_total", "Notifications delivered, by channel.", ["channel"]
)
notifications_failed_total = Counter(
    "notifications_failed_total",
    "Notification delivery attempts that failed, by channel.",
    ["channel"],
)

# API
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
http_requests_total = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
attempts_ingested_total = Counter(
    "attempts_ingested_total", "Attempts ingested, by outcome.", ["outcome"]
)

# Known label values start at 0 in every process: Prometheus' increase() never counts a series'
# first sample, so the first error (or export) after a restart would be invisible to the alerts.
for _status in ("success", "error"):
    analytics_worker_ticks_total.labels(_status)
    export_worker_ticks_total.labels(_status)
for _format in ("csv", "pdf", "xlsx"):
    exports_requested_total.labels(_format)
    exports_generated_total.labels(_format)
    exports_failed_total.labels(_format)
for _channel in ("email", "telegram", "webhook"):
    notifications_sent_total.labels(_channel)
    notifications_failed_total.labels(_channel)


@cache  # registering twice would raise
def expose_worker_gauges() -> None:
    """Export the analytics worker's gauges from this process.

    Only the worker does: in the API or the export worker, the last success would read 0, and
    ReportingWorkerNoRecentSuccess (the newest success per job) would fire for those jobs for ever.
    """
    for gauge in _WORKER_GAUGES:
        REGISTRY.register(gauge)


def serve(port: int, host: str) -> WSGIServer | None:
    """A worker's own /metrics on host:port, from a thread. None, after one line on stderr, when
    the address cannot be bound: the worker then exits 2, as for a bad setting."""
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as error:
        print(f"error: cannot serve metrics on {host}:{port}: {error}", file=sys.stderr)
        return None
    log.info("serving metrics", extra={"host": host, "port": port})
    return server
