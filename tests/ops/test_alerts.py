"""The Prometheus alert rules: valid, unit-tested with promtool, every rule shown firing and quiet."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops.promql import ALERTS, DEPLOY, load_yaml, parse, prometheus_rules

PROMETHEUS = DEPLOY / "prometheus"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
# The alerts CONTRACT §7 asks for, plus what keeps them meaningful (a target that is down says
# nothing through any other rule).
REQUIRED_ALERTS = {
    "ReportingWorkerTickTooSlow",
    "ReportingWorkerNoRecentSuccess",
    "AnalyticsWorkerTickFailed",
    "ExportWorkerTickFailed",
    "ExportsNotGenerated",
    "ApiHighErrorRate",
    "ApiHighLatencyP95",
    "ReportingTargetDown",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is missing: run scripts/system-deps.sh (Debian package prometheus)"
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(prometheus_rules())} rules found" in result.stdout


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"] == ["alerts.yml"]


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_required_alerts_exist_with_severity_and_runbook() -> None:
    rules = {rule["alert"]: rule for rule in prometheus_rules()}
    assert set(rules) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(rules)
    runbooks = (DEPLOY.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, rule in rules.items():
        parse(rule["expr"])  # our parser reads it too (the metric-name check depends on it)
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert f"### {name}" in runbooks, f"docs/operations.md has no runbook for {name}"


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    """Each alert has an evaluation with an expected alert and one with none."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in prometheus_rules()}
    assert names - firing == set(), f"never shown firing: {names - firing}"
    assert names - quiet == set(), f"never shown quiet: {names - quiet}"


@pytest.mark.parametrize("alert", sorted(rule["alert"] for rule in prometheus_rules()))
def test_unit_tests_catch_a_rule_that_never_fires(alert: str, tmp_path: Path) -> None:
    """Break one rule (it can never fire): promtool's unit tests must notice."""
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0, f"the tests still pass with {alert} broken"
    assert alert in result.stdout + result.stderr
