"""The deployment files, checked structurally (no Docker engine runs here).

docker-compose.yml: the services of the stack, pinned images, health checks, the start order,
published ports, and every environment name given to our processes is a real setting (and the
whole set, interpolated as compose would, loads). Dockerfile: multi-stage, a wheel built in the
builder, a slim non-root runtime without compilers, a health check on /healthz.
"""

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from pydantic_settings import BaseSettings

from reporting import settings as settings_module
from tests.ops.promql import DEPLOY, load_yaml

ROOT = DEPLOY.parent
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
OUR_SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
# CONTRACT §4, word for word.
CONTRACT_SETTINGS = {
    "REPORTING_WORKER_INTERVAL_SECS",
    "REPORTING_ENABLE_LIVE_UPDATES",
    "REPORTING_EXPORT_TTL_HOURS",
    "REPORTING_EXPORT_RATE_LIMIT_PER_HOUR",
    "REPORTING_SIGNED_URL_TTL_HOURS",
    "OBJECT_STORAGE_ENDPOINT",
    "OBJECT_STORAGE_BUCKET",
    "OBJECT_STORAGE_ACCESS_KEY",
    "OBJECT_STORAGE_SECRET_KEY",
    "OBJECT_STORAGE_REGION",
    "OBJECT_STORAGE_PREFIX",
    "DATABASE_URL",
    "REPORTING_DATA_DIR",
    "REPORTING_JWT_SECRET",
    "REPORTING_JWT_PUBLIC_KEY",
    "REPORTING_JWT_AUDIENCE",
    "REPORTING_JWT_ISSUER",
    "REPORTING_LEADERBOARD_SIZE",
    "REPORTING_PUBLIC_URL",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run our image."""
    return {name: s for name, s in services.items() if "build" in s}


def _argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (ours: `reporting` from the Dockerfile) + command."""
    entrypoint = service.get("entrypoint", ["reporting"])
    command = service.get("command", [])
    assert isinstance(entrypoint, list) and isinstance(command, list), service
    return [*entrypoint, *command]


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def setting_aliases() -> set[str]:
    """Every environment name the service reads: the alias of every field of every section."""
    names: set[str] = set()
    for value in vars(settings_module).values():
        if (
            isinstance(value, type)
            and issubclass(value, BaseSettings)
            and value is not BaseSettings
        ):
            names.update(field.alias for field in value.model_fields.values() if field.alias)
    return names


def test_the_stack_has_every_part(services: dict[str, dict[str, Any]]) -> None:
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    assert images["postgres"].startswith("postgres:16")
    assert images["minio"].startswith("minio/minio:")
    assert images["minio-init"].startswith("minio/mc:")
    assert images["mailpit"].startswith("axllent/mailpit:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    assert set(_ours(services)) == {"migrate", "api", "reporting-worker", "export-worker"}


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (DEPLOY / service["build"]["context"] / "deploy" / "Dockerfile").is_file()
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_our_processes_run_the_console_scripts(services: dict[str, dict[str, Any]]) -> None:
    ours = _ours(services)
    assert _argv(ours["migrate"]) == ["reporting", "migrate"]
    api = _argv(ours["api"])
    assert api[:2] == ["reporting", "serve"] and _option(api, "--host") == "0.0.0.0"
    for name in ("reporting-worker", "export-worker"):
        argv = _argv(ours[name])
        assert argv[0] == name and argv[0] in OUR_SCRIPTS
        assert "--once" not in argv
        assert int(_option(argv, "--metrics-port")) > 1024
        assert _option(argv, "--metrics-host") == "0.0.0.0"


def _depends(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for other, condition in _depends(service).items():
            assert other in services, f"{name} depends on unknown {other}"
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition == "service_healthy":
                assert "healthcheck" in services[other], f"{other} needs a health check"
    assert _depends(services["migrate"]) == {"postgres": "service_healthy"}
    assert _depends(services["minio-init"]) == {"minio": "service_healthy"}
    for name in ("api", "reporting-worker", "export-worker"):
        depends = _depends(services[name])
        assert depends["migrate"] == "service_completed_successfully", name
        assert depends["minio-init"] == "service_completed_successfully", name
    assert {"api", "reporting-worker", "export-worker"} <= set(_depends(services["prometheus"]))
    assert "prometheus" in _depends(services["grafana"])
    _assert_acyclic({name: set(_depends(s)) for name, s in services.items()})


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        if node not in done:
            for other in graph[node]:
                visit(other, (*path, node))
            done.add(node)

    for node in graph:
        visit(node, ())


def test_health_checks(services: dict[str, dict[str, Any]]) -> None:
    one_shots = {"migrate", "minio-init"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check"
        assert check["test"][1:], name
    ours = _ours(services)
    assert "http://127.0.0.1:8000/" in " ".join(ours["api"]["healthcheck"]["test"])
    for name in ("reporting-worker", "export-worker"):
        port = _option(_argv(ours[name]), "--metrics-port")
        assert f"http://127.0.0.1:{port}/metrics" in " ".join(ours[name]["healthcheck"]["test"])


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    published: dict[str, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, _, _ = str(port).rpartition(":")
            assert host not in published, f"{name} and {published.get(host)} both publish {host}"
            published[host] = name
    assert published["8000"] == "api"
    assert published["3000"] == "grafana"
    assert published["9090"] == "prometheus"
    assert published["8025"] == "mailpit"
    assert published["9000"] == "minio"


def test_prometheus_scrapes_the_api_and_both_workers(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    ours = _ours(services)
    expected = {
        "reporting-api": "api:8000",
        "reporting-worker": f"reporting-worker:{_option(_argv(ours['reporting-worker']), '--metrics-port')}",
        "export-worker": f"export-worker:{_option(_argv(ours['export-worker']), '--metrics-port')}",
    }
    for job, target in expected.items():
        assert targets[job] == target
    volumes = services["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in volumes
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_every_env_name_of_our_services_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = setting_aliases()
    assert known >= CONTRACT_SETTINGS, "reporting.settings lacks a CONTRACT §4 name"
    for name, service in _ours(services).items():
        environment = service["environment"]
        unknown = set(environment) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of reporting.settings"
        missing = CONTRACT_SETTINGS - set(environment)
        assert not missing, f"{name} does not set {sorted(missing)}"


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?error}, $X and $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        current = env.get(name)
        if operator in (":-", "-"):
            unset = current is None or (operator == ":-" and current == "")
            return argument if unset else str(current)
        if operator in (":?", "?") and (current is None or (operator == ":?" and current == "")):
            raise ValueError(f"{name}: {argument}")
        return current or ""

    return _VARIABLE.sub(replace, value)


def test_the_interpolated_environment_loads(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What compose would hand our processes is a valid configuration (values, not just names)."""
    monkeypatch.chdir(tmp_path)  # no .env of the repository
    for name in setting_aliases():
        monkeypatch.delenv(name, raising=False)
    shell = {"REPORTING_JWT_SECRET": "compose-test-secret-0123456789"}
    environment = services["api"]["environment"]
    with pytest.raises(ValueError, match="REPORTING_JWT_SECRET"):
        interpolate(str(environment["REPORTING_JWT_SECRET"]), {})
    for key, value in environment.items():
        monkeypatch.setenv(key, interpolate(str(value), shell))

    loaded = settings_module.load_settings()

    assert loaded.database.url == "postgresql://reporting:reporting@postgres:5432/reporting"
    assert loaded.storage.bucket == "reporting-exports"
    assert loaded.storage.endpoint == "http://minio:9000"
    assert loaded.notify.smtp_host == "mailpit"
    assert loaded.auth.jwt_audience is None and loaded.auth.jwt_issuer is None
    assert loaded.auth.jwt_public_key is None
    assert loaded.worker.interval_secs == 3600
    assert loaded.exports.rate_limit_per_hour == 5
    # the bucket the init job creates is the one the service uses
    init = services["minio-init"]
    assert interpolate(init["environment"]["OBJECT_STORAGE_BUCKET"], {}) == loaded.storage.bucket
    assert "mb --ignore-existing" in " ".join(init["command"])
    assert (
        interpolate(init["environment"]["MINIO_ROOT_PASSWORD"], {})
        == loaded.storage.secret_key.get_secret_value()  # type: ignore[union-attr]
    )


def test_grafana_reads_the_tested_provisioning(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    environment = services["grafana"]["environment"]
    assert environment["GF_SMTP_HOST"] == "mailpit:1025"
    assert environment["GF_SMTP_ENABLED"] == "true"


# --- Dockerfile ----------------------------------------------------------------------------------

# Compilers and headers: none of them may be installed in the image we ship.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|cmake|rustc|cargo|[\w.+-]+-dev|libpq-dev)\b"
)


def _stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, split into stages at each FROM."""
    stages: list[list[dict[str, Any]]] = []
    for instruction in DockerfileParser(str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if instruction["instruction"] != "COMMENT":
            assert stages, "an instruction before the first FROM"
            stages[-1].append(instruction)
    return stages


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == instruction]


def test_dockerfile_is_multi_stage_with_a_wheel_builder() -> None:
    stages = _stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert _values(builder, "FROM")[0].endswith(" AS builder")
    assert any("pip wheel" in run for run in _values(builder, "RUN"))
    base = _values(runtime, "FROM")[0].split()[0]
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), base
    installs = [run for run in _values(runtime, "RUN") if "pip install" in run]
    assert installs and all("from=builder" in run and "--no-index" in run for run in installs)
    # the runtime receives no source tree, only what pip installs from the wheels
    assert not _values(runtime, "COPY"), "COPY in the runtime stage"


def test_runtime_stage_has_no_build_tools() -> None:
    runtime = _stages()[-1]
    for run in _values(runtime, "RUN"):
        if "apt-get install" in run or "apk add" in run:
            assert not BUILD_TOOLS.search(run), f"build tools in the runtime stage: {run}"


def test_runtime_runs_as_a_non_root_user() -> None:
    runtime = _stages()[-1]
    users = _values(runtime, "USER")
    assert users, "no USER in the runtime stage"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # the USER switch comes after the last RUN (which still needs root to install)
    kinds = [i["instruction"] for i in runtime]
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")


def test_healthcheck_and_entrypoint() -> None:
    runtime = _stages()[-1]
    (check,) = _values(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in check
    assert _values(runtime, "ENTRYPOINT") == ['["reporting"]']
    (cmd,) = _values(runtime, "CMD")
    assert cmd.startswith('["serve", "--host", "0.0.0.0"')


def test_build_context_is_trimmed() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!src/"]
