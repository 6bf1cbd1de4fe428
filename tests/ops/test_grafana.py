"""Grafana's files load unchanged: datasource, dashboard provider, dashboard JSON, alerting."""

import re
from pathlib import Path
from typing import Any

import pytest

from tests.ops.promql import (
    DASHBOARDS,
    DEPLOY,
    GRAFANA_ALERTING,
    dashboard_panels,
    dashboards,
    grafana_alert_rules,
    load_yaml,
    parse,
    prometheus_rules,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE = DEPLOY / "docker-compose.yml"


def _grafana_service() -> dict[str, Any]:
    service: dict[str, Any] = load_yaml(COMPOSE)["services"]["grafana"]
    return service


def _mounts() -> dict[str, Path]:
    """Container path -> host path (relative to deploy/) of the Grafana service's bind mounts."""
    mounts = {}
    for volume in _grafana_service()["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def _host_path(container_path: str) -> Path:
    for target, source in _mounts().items():
        if container_path == target or container_path.startswith(target + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not mounted into the grafana service")


def test_provisioning_is_mounted_where_grafana_reads_it() -> None:
    assert _host_path("/etc/grafana/provisioning") == PROVISIONING.resolve()
    for kind in ("datasources", "dashboards", "alerting"):
        assert list((PROVISIONING / kind).glob("*.yml")), f"nothing in provisioning/{kind}"


def _datasources() -> list[dict[str, Any]]:
    found = []
    for path in (PROVISIONING / "datasources").glob("*.yml"):
        document = load_yaml(path)
        assert document["apiVersion"] == 1, path
        found.extend(document["datasources"])
    return found


def test_datasource_points_at_the_compose_prometheus() -> None:
    (prometheus,) = [d for d in _datasources() if d["type"] == "prometheus"]
    assert prometheus["uid"] == "prometheus"
    assert prometheus["access"] == "proxy"
    assert prometheus["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(COMPOSE)["services"]


def test_dashboard_provider_loads_our_dashboards() -> None:
    (path,) = (PROVISIONING / "dashboards").glob("*.yml")
    document = load_yaml(path)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["name"] and provider["folder"]
    assert _host_path(provider["options"]["path"]) == DASHBOARDS.resolve()
    assert list(DASHBOARDS.glob("*.json"))


def test_dashboard_json_is_complete() -> None:
    uids = set()
    for path, dashboard in dashboards().items():
        assert "id" not in dashboard or dashboard["id"] is None, f"{path.name}: no fixed id"
        for key in ("uid", "title", "panels", "schemaVersion", "time"):
            assert dashboard.get(key), f"{path.name}: missing {key}"
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in dashboard_panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard_panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["targets"], panel
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel[
                "title"
            ]
            for target in panel["targets"]:
                parse(target["expr"])


def _all_exprs() -> str:
    return "\n".join(
        target["expr"]
        for dashboard in dashboards().values()
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    )


@pytest.mark.parametrize(
    ("topic", "metric"),
    [
        ("API traffic by route", "http_requests_total"),
        ("API latency by route", "http_request_duration_seconds_bucket"),
        ("analytics ticks", "analytics_worker_ticks_total"),
        ("tick durations", "reporting_worker_tick_duration_seconds_bucket"),
        ("export worker ticks", "export_worker_ticks_total"),
        ("exports by format", "exports_generated_total"),
        ("failed exports", "exports_failed_total"),
        ("export requests", "exports_requested_total"),
        ("rate-limit rejections", "exports_rate_limited_total"),
        ("notifications", "notifications_sent_total"),
        ("notification failures", "notifications_failed_total"),
    ],
)
def test_dashboard_shows(topic: str, metric: str) -> None:
    assert re.search(rf"\b{metric}\b", _all_exprs()), f"no panel shows {topic} ({metric})"


def test_dashboard_breaks_down_by_route_format_and_status() -> None:
    exprs = _all_exprs()
    assert re.search(r"by \((route|[^)]*\broute\b)[^)]*\) \(rate\(http_requests_total", exprs)
    assert re.search(r"by \(format\) \(rate\(exports_generated_total", exprs)
    assert re.search(r"by \(status\) \(rate\(export_worker_ticks_total", exprs)


def _alerting_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, load_yaml(path)) for path in sorted(GRAFANA_ALERTING.glob("*.yml"))]


def test_alerting_provisioning_structure() -> None:
    documents = _alerting_documents()
    assert documents
    contact_points = {
        point["name"] for _, doc in documents for point in doc.get("contactPoints") or []
    }
    for path, document in documents:
        assert document["apiVersion"] == 1, path
        for policy in document.get("policies") or []:
            assert policy["receiver"] in contact_points, policy
        for group in document.get("groups") or []:
            assert group["orgId"] == 1 and group["name"] and group["folder"]
            assert re.fullmatch(r"\d+[smh]", group["interval"]), group["interval"]
            for rule in group["rules"]:
                _check_grafana_rule(rule)


def _check_grafana_rule(rule: dict[str, Any]) -> None:
    title = rule["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", rule["uid"]), rule["uid"]
    refs = {query["refId"]: query for query in rule["data"]}
    assert rule["condition"] in refs, title
    for query in rule["data"]:
        model = query["model"]
        assert model["refId"] == query["refId"], title
        if query["datasourceUid"] == "__expr__":
            assert model["type"] in {"reduce", "threshold", "math", "classic_conditions"}, title
            assert model["expression"] in refs, f"{title}: {model['expression']} is not a query"
        else:
            assert query["datasourceUid"] == "prometheus", title
            assert query["relativeTimeRange"]["from"] > 0, title
            parse(model["expr"])
    assert rule["noDataState"] in {"OK", "NoData", "Alerting"}, title
    assert rule["execErrState"] in {"OK", "Error", "Alerting"}, title
    assert re.fullmatch(r"\d+[smh]", rule["for"]), title
    assert rule["labels"]["severity"] in {"warning", "critical"}, title
    assert rule["annotations"]["summary"], title


def _normalise(promql: str) -> str:
    return " ".join(promql.split())


def test_grafana_alerts_mirror_the_tested_prometheus_rules() -> None:
    """Same name, expression and `for` as in alerts.yml, so promtool's tests cover them too."""
    prometheus = {rule["alert"]: rule for rule in prometheus_rules()}
    grafana = {rule["title"]: rule for rule in grafana_alert_rules()}
    assert set(grafana) == set(prometheus)
    for name, rule in grafana.items():
        (query,) = [q for q in rule["data"] if q["datasourceUid"] != "__expr__"]
        assert _normalise(query["model"]["expr"]) == _normalise(prometheus[name]["expr"]), name
        assert rule["for"] in {prometheus[name].get("for", "0s"), "0m"}, name
        assert rule["labels"]["severity"] == prometheus[name]["labels"]["severity"], name


def test_alerting_env_references_are_set_for_grafana() -> None:
    """Grafana expands $VAR in provisioning files: any `$` is a variable the compose file sets."""
    environment = _grafana_service()["environment"]
    for path in GRAFANA_ALERTING.glob("*.yml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("#"):
                continue
            for match in re.finditer(r"\$(\{(\w+)\}|\w*)", line):
                name = match.group(2)
                assert name, f"{path.name}: a bare `$` Grafana would expand: {line.strip()}"
                assert name in environment, f"{path.name}: ${{{name}}} is not set for grafana"
