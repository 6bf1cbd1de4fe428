"""`reporting ingest directory|attempts FILE`: the real console script, and the loader in-process."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reporting.ingest import files
from reporting.ingest.schemas import ATTEMPT_FIELDS
from tests.ingest.conftest import DIRECTORY, attempt, count
from tests.ops.processes import service_env

REPORTING = Path(sys.executable).parent / "reporting"


def run(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = service_env(database_url=url, data_dir=None, extra={"REPORTING_LOG_JSON": "false"})
    return subprocess.run(
        [str(REPORTING), "ingest", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(reversed(ATTEMPT_FIELDS)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _positions(text: str, parts: list[str]) -> list[int]:
    found = [text.find(part) for part in parts]
    assert -1 not in found, (parts, text)
    return found


@pytest.fixture
def directory_loaded(fresh_db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(DIRECTORY, ensure_ascii=False))
    files.ingest_directory_file(fresh_db_url, path)


@pytest.mark.slow
def test_directory_then_jsonl_through_the_console_script(fresh_db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "directory.json"
    directory.write_text(json.dumps(DIRECTORY, ensure_ascii=False))
    attempts = write_jsonl(
        tmp_path / "attempts.jsonl",
        [attempt("ev-1"), attempt("ev-2", user_id="u-olga", group_id="g-7b"), attempt("ev-1")],
    )

    loaded = run(fresh_db_url, "directory", str(directory), cwd=tmp_path)
    first = run(fresh_db_url, "attempts", str(attempts), cwd=tmp_path)
    again = run(fresh_db_url, "attempts", str(attempts), cwd=tmp_path)

    assert loaded.returncode == 0, loaded.stderr
    assert "upserted 2 groups, 3 users (4 memberships), 1 levels, 2 topics" in loaded.stdout
    stages = ["1/3, checking", "2/3, writing", "3/3, done"]  # the progress bar, in order
    assert _positions(loaded.stderr, stages) == sorted(_positions(loaded.stderr, stages))
    assert first.returncode == 0, first.stderr
    assert "3 attempts read, 2 inserted, 1 duplicates" in first.stdout
    assert "attempts.jsonl" in first.stderr  # the progress bar
    assert "0 inserted, 3 duplicates" in again.stdout
    assert count(fresh_db_url) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("directory_loaded")
def test_a_jsonl_file_with_bad_lines_is_rejected_whole(fresh_db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "attempts.jsonl"
    lines = [
        json.dumps(attempt("ev-1")),
        json.dumps(attempt("ev-2", hints_used=-1)),
        "",
        "{not json",
        json.dumps(attempt("ev-5", user_id="u-nobody")),
        json.dumps(attempt("ev-6")),
    ]
    path.write_text("\n".join(lines) + "\n")

    result = run(fresh_db_url, "attempts", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert "attempts.jsonl rejected, nothing inserted: 3 bad lines" in result.stderr
    assert "line 2: hints_used: Input should be greater than or equal to 0" in result.stderr
    assert "line 4: " in result.stderr
    assert "line 5: unknown user id 'u-nobody'" in result.stderr
    assert count(fresh_db_url) == 0


@pytest.mark.slow
@pytest.mark.usefixtures("directory_loaded")
def test_a_csv_file_goes_in_and_a_bad_line_rejects_it(fresh_db_url: str, tmp_path: Path) -> None:
    good = write_csv(
        tmp_path / "good.csv",
        [attempt("ev-1", is_correct="false"), attempt("ev-2", topic_id="t-mul", score="7.25")],
    )
    bad = write_csv(
        tmp_path / "bad.csv",
        [attempt("ev-3"), attempt("ev-4", time_spent_ms="soon"), attempt("ev-5")],
    )

    loaded = run(fresh_db_url, "attempts", str(good), cwd=tmp_path)
    rejected = run(fresh_db_url, "attempts", str(bad), cwd=tmp_path)

    assert loaded.returncode == 0, loaded.stderr
    assert "2 attempts read, 2 inserted, 0 duplicates" in loaded.stdout
    assert rejected.returncode == 1
    assert "bad.csv rejected, nothing inserted: 1 bad line" in rejected.stderr
    assert "line 3: time_spent_ms: Input should be a valid integer" in rejected.stderr
    assert count(fresh_db_url) == 2
    assert count(fresh_db_url, "SELECT count(*) FROM attempts WHERE NOT is_correct") == 1


@pytest.mark.usefixtures("directory_loaded")
def test_a_bad_line_in_a_later_chunk_undoes_the_earlier_chunks(
    fresh_db_url: str, tmp_path: Path
) -> None:
    rows = [attempt(f"ev-{i}") for i in range(9)] + [attempt("ev-9", group_id="g-none")]
    path = write_jsonl(tmp_path / "attempts.jsonl", rows)

    with pytest.raises(files.IngestFileError, match=r"line 10: unknown group id 'g-none'"):
        files.ingest_attempts_file(fresh_db_url, path, chunk_lines=3)

    assert count(fresh_db_url) == 0
    # Fixed and loaded again, the file goes in whole.
    write_jsonl(path, rows[:-1])
    assert "9 inserted" in files.ingest_attempts_file(fresh_db_url, path, chunk_lines=3)
    assert count(fresh_db_url) == 9


@pytest.mark.usefixtures("directory_loaded")
def test_chunks_add_up(fresh_db_url: str, tmp_path: Path) -> None:
    rows = [attempt(f"ev-{i % 7}") for i in range(10)]  # three events repeat
    path = write_jsonl(tmp_path / "attempts.jsonl", rows)

    summary = files.ingest_attempts_file(fresh_db_url, path, chunk_lines=3)

    assert "10 attempts read, 7 inserted, 3 duplicates" in summary
    assert count(fresh_db_url) == 7


@pytest.mark.usefixtures("directory_loaded")
def test_a_csv_without_a_needed_column_is_rejected(fresh_db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "attempts.csv"
    path.write_text("event_id,user_id\nev-1,u-anna\n")

    with pytest.raises(files.IngestFileError, match=r"line 1: the CSV header lacks .*group_id"):
        files.ingest_attempts_file(fresh_db_url, path)


def test_an_attempts_file_must_be_jsonl_or_csv(fresh_db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "attempts.xml"
    path.write_text("<attempts/>")

    with pytest.raises(files.IngestFileError, match=r"must be \.jsonl or \.csv"):
        files.ingest_attempts_file(fresh_db_url, path)


@pytest.mark.slow
def test_a_directory_file_with_unknown_references_writes_nothing(
    fresh_db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "directory.json"
    body = {**DIRECTORY, "users": [{"id": "u-x", "display_name": "Икс", "group_ids": ["g-x"]}]}
    path.write_text(json.dumps(body, ensure_ascii=False))

    result = run(fresh_db_url, "directory", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert "directory.json: 2/3, rejected" in result.stderr  # the bar says where it stopped
    assert "directory.json rejected, nothing written: 1 entry is not valid" in result.stderr
    assert "users[0].group_ids[0]: unknown group id 'g-x'" in result.stderr
    assert count(fresh_db_url, "SELECT count(*) FROM groups") == 0


@pytest.mark.usefixtures("directory_loaded")
def test_a_line_that_is_not_utf8_rejects_the_file(fresh_db_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "attempts.csv", [attempt(f"ev-{i}") for i in range(6)])
    path.write_bytes(path.read_bytes().replace(b"ev-4", b"ev-\xff"))

    with pytest.raises(files.IngestFileError, match=r"line 6 is not UTF-8"):
        files.ingest_attempts_file(fresh_db_url, path, chunk_lines=2)

    assert count(fresh_db_url) == 0
