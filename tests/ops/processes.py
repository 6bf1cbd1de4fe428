"""The service's console scripts as real OS processes, and what they expose (/metrics, logs).

`start_api`, `start_reporting_worker`, `start_export_worker` launch `.venv/bin/<script>` with a
clean environment of our own settings (nothing inherited from the developer's shell or a `.env`),
log to a file, and wait until the process answers HTTP (the API's /healthz, a worker's /metrics).
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import JWT_SECRET
from tests.servers import free_port

BIN = Path(sys.executable).parent
# Settings the processes must not pick up from the shell that runs the tests.
_OURS = ("REPORTING_", "OBJECT_STORAGE_", "DATABASE_URL")


def service_env(
    *, database_url: str | None, data_dir: Path | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a service process: the test JWT secret, JSON logs, `extra` on top.
    Every process a test starts takes it, so no setting comes from the shell that runs the tests
    (a developer's exported REPORTING_ENABLE_LIVE_UPDATES, say)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update(
        {
            "REPORTING_JWT_SECRET": JWT_SECRET,
            "REPORTING_LOG_JSON": "true",
            "REPORTING_LOG_LEVEL": "INFO",
        }
    )
    if data_dir is not None:
        env["REPORTING_DATA_DIR"] = str(data_dir)
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra or {})
    return env


@dataclass
class ServiceProcess:
    """One running console script; `url` is where it answers HTTP."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str
    log_file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        """Every log line parsed as JSON; fails naming the first line that is not a JSON object."""
        records = []
        for number, line in enumerate(self.logs().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(
                    f"{self.name} log line {number} is not JSON: {line!r}"
                ) from None
            assert isinstance(record, dict), f"{self.name} log line {number}: {line!r}"
            records.append(record)
        return records

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise AssertionError(
                    f"{self.name} exited with {code} before it answered {path}:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not answer {path} in {timeout} s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (fails if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout} s:\n{self.tail()}"
            ) from None
        self.log_file.close()
        return code

    def kill(self) -> None:
        """SIGKILL: what a crash or the OOM killer does."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log_file.close()

    def metrics(self) -> "Scrape":
        response = httpx.get(self.url + "/metrics", timeout=5)
        assert response.status_code == 200, f"{self.name} /metrics: {response.status_code}"
        return Scrape.parse(response.text)


def _start(
    name: str, argv: list[str], env: dict[str, str], workdir: Path, url: str, ready_path: str
) -> ServiceProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [str(BIN / argv[0]), *argv[1:]],
        env=env,
        cwd=workdir,  # no stray .env from the repository
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    service = ServiceProcess(name, process, log_path, url, log_file)
    try:
        service.wait_ready(ready_path, timeout=60)
    except BaseException:
        service.kill()
        raise
    return service


def start_api(env: dict[str, str], workdir: Path) -> ServiceProcess:
    port = free_port()
    argv = ["reporting", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return _start("api", argv, env, workdir, f"http://127.0.0.1:{port}", "/healthz")


def start_reporting_worker(
    env: dict[str, str], workdir: Path, *, name: str = "reporting-worker"
) -> ServiceProcess:
    port = free_port()
    argv = ["reporting-worker", "--metrics-port", str(port)]
    return _start(name, argv, env, workdir, f"http://127.0.0.1:{port}", "/metrics")


def start_export_worker(
    env: dict[str, str], workdir: Path, *, name: str = "export-worker"
) -> ServiceProcess:
    port = free_port()
    argv = ["export-worker", "--metrics-port", str(port)]
    return _start(name, argv, env, workdir, f"http://127.0.0.1:{port}", "/metrics")


def run_once(script: str, env: dict[str, str], workdir: Path, timeout: float = 60) -> str:
    """Run `<script> --once` to completion; returns its output, fails on a non-zero exit."""
    result = subprocess.run(
        [str(BIN / script), "--once"],
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"{script} --once exited {result.returncode}:\n{output}"
    return output


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Scrape:
    """One /metrics answer: the metric names it exports and its samples."""

    names: set[str]
    samples: list[Sample]

    @classmethod
    def parse(cls, text: str) -> "Scrape":
        names: set[str] = set()
        samples: list[Sample] = []
        # TYPE lines name even the families that have no sample yet (labelled, never used).
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                names.update(_series_names(name, kind))
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.add(sample.name)
                samples.append(Sample(sample.name, dict(sample.labels), float(sample.value)))
        return cls(names, samples)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def _series_names(family: str, kind: str) -> set[str]:
    """The series names a family of this type exposes (a histogram `x`: x_bucket, x_sum, x_count)."""
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count"}
    return {family}
