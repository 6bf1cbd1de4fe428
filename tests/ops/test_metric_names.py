"""Every metric a PromQL expression of ours uses is one the real processes export.

The API and both workers run as OS processes from their console scripts; their /metrics are
scraped and every selector of the alert rules, the Grafana alerts and the dashboard panels is
checked against what they answer (a histogram `x` answers x_bucket, x_sum and x_count).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops import processes
from tests.ops.processes import Scrape, ServiceProcess
from tests.ops.promql import all_expressions, selectors

# Series Prometheus makes itself for every target; no process exports them.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Labels Prometheus attaches at scrape time.
TARGET_LABELS = {"job", "instance"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scrapes(
    server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Scrape]]:
    """One scrape of each process (module-scoped: starting them is the slow part)."""
    from tests.conftest import _clone, _drop_database, _with_database

    name = _clone(server_url, template_db)
    workdir = tmp_path_factory.mktemp("metric-names")
    env = processes.service_env(
        database_url=_with_database(server_url, name), data_dir=workdir / "data"
    )
    started: list[ServiceProcess] = []
    try:
        for start in (
            processes.start_api,
            processes.start_reporting_worker,
            processes.start_export_worker,
        ):
            started.append(start(env, Path(workdir)))
        yield {service.name: service.metrics() for service in started}
    finally:
        for service in started:
            service.terminate()
        _drop_database(server_url, name)


def test_every_process_serves_its_own_metrics(scrapes: dict[str, Scrape]) -> None:
    assert "http_requests_total" in scrapes["api"].names
    assert "reporting_worker_tick_duration_seconds_bucket" in scrapes["reporting-worker"].names
    assert "analytics_worker_ticks_total" in scrapes["reporting-worker"].names
    assert "export_worker_ticks_total" in scrapes["export-worker"].names
    assert "exports_generated_total" in scrapes["export-worker"].names


def test_only_the_analytics_worker_exports_its_gauges(scrapes: dict[str, Scrape]) -> None:
    """Elsewhere the last success would read 0 and ReportingWorkerNoRecentSuccess, the newest
    success per job, would fire for the API's and the export worker's jobs for ever."""
    gauges = {
        "reporting_worker_last_success_timestamp_seconds",
        "reporting_worker_tick_started_timestamp_seconds",
    }
    assert gauges <= scrapes["reporting-worker"].names
    assert not gauges & scrapes["api"].names
    assert not gauges & scrapes["export-worker"].names


def test_every_metric_in_our_promql_is_exported(scrapes: dict[str, Scrape]) -> None:
    exported = set().union(*(scrape.names for scrape in scrapes.values())) | SYNTHETIC
    unknown = {
        f"{expression.where}: {selector.name}"
        for expression in all_expressions()
        for selector in selectors(expression.promql)
        if selector.name not in exported
    }
    assert not unknown, "metrics no process exports:\n" + "\n".join(sorted(unknown))


def test_label_values_matched_exactly_exist(scrapes: dict[str, Scrape]) -> None:
    """`le="90.0"`, `status="error"`: an equality matcher on a value nobody exports never matches."""
    missing = []
    for expression in all_expressions():
        for selector in selectors(expression.promql):
            if selector.name in SYNTHETIC:
                continue
            for label, value in selector.equals.items():
                if label in TARGET_LABELS | {"__name__"}:
                    continue
                values = set().union(
                    *(scrape.label_values(selector.name, label) for scrape in scrapes.values())
                )
                if value not in values:
                    missing.append(f"{expression.where}: {selector.name}{{{label}={value!r}}}")
    assert not missing, "matchers on values no process exports:\n" + "\n".join(missing)
