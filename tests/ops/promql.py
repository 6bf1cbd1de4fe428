"""Every PromQL expression the deploy files hold, and the metric selectors inside each one.

Sources: the Prometheus rules (deploy/prometheus/alerts.yml), the Grafana alert rules
(deploy/grafana/provisioning/alerting/*.yml) and every panel target of the dashboards
(deploy/grafana/dashboards/*.json). Expressions are parsed with a real PromQL parser, so a
metric name inside a string or a label value is never mistaken for one.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
GRAFANA_ALERTING = DEPLOY / "grafana" / "provisioning" / "alerting"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

# Grafana's range variables become a plain duration before parsing.
_GRAFANA_VARIABLES = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)


@dataclass(frozen=True)
class Expression:
    where: str  # file and rule/panel, for failure messages
    promql: str


@dataclass(frozen=True)
class Selector:
    """A vector selector: the metric name and its equality matchers (label -> value)."""

    name: str
    equals: dict[str, str]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prometheus_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def grafana_alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted(GRAFANA_ALERTING.glob("*.yml")):
        for group in load_yaml(path).get("groups") or []:
            rules.extend(group["rules"])
    return rules


def dashboards() -> dict[Path, dict[str, Any]]:
    return {
        path: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def all_expressions() -> list[Expression]:
    found = [
        Expression(f"{ALERTS.name}: {rule['alert']}", rule["expr"]) for rule in prometheus_rules()
    ]
    for rule in grafana_alert_rules():
        for query in rule["data"]:
            expr = query["model"].get("expr")
            if expr is not None:
                found.append(Expression(f"Grafana alert {rule['title']} ({query['refId']})", expr))
    for path, dashboard in dashboards().items():
        for panel in dashboard_panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" in target:
                    where = f"{path.name}: panel {panel['title']!r} ({target['refId']})"
                    found.append(Expression(where, target["expr"]))
    return found


def parse(promql: str) -> Any:
    """The expression's AST; raises ValueError on a syntax error."""
    return promql_parser.parse(_GRAFANA_VARIABLES.sub("5m", promql))


def selectors(promql: str) -> list[Selector]:
    """Every vector selector in the expression (a `{__name__="x"}` one counts as `x`)."""
    found: list[Selector] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            equals = {
                m.name: m.value
                for m in node.matchers.matchers
                if m.op == promql_parser.MatchOp.Equal
            }
            name = node.name or equals.get("__name__")
            assert name, f"a selector without a metric name: {promql}"
            found.append(Selector(name, equals))
        return True

    promql_parser.walk(parse(promql), visit)
    return found
