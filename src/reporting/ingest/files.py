"""`reporting ingest directory FILE.json` and `reporting ingest attempts FILE.jsonl|FILE.csv`.

A file is all or nothing. Every line is checked (types, then ids against the directory) and a
file with any bad line is rejected whole: nothing is inserted, and the error names the first bad
lines and says how many there were, so the file can be fixed and loaded again. A good file goes
in chunks of CHUNK_LINES: COPY into a staging table, then one INSERT ... SELECT that resolves ids
to keys and skips known event ids, all in one transaction committed at the end.

Attempt files: JSON Lines (one attempt object a line; blank lines are skipped) or CSV whose header
names the attempt fields in any order (extra columns are ignored). Times without a zone are UTC.
"""

import asyncio
import csv
import gc
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import psycopg
from pydantic import ValidationError
from tqdm import tqdm

from reporting.ingest import copy, service
from reporting.ingest.schemas import (
    ATTEMPT_FIELDS,
    AttemptCreate,
    DirectoryCounts,
    DirectoryUpsert,
    EntriesRejected,
    FieldError,
    field_errors,
)

CHUNK_LINES = 50_000
LISTED_BAD_LINES = 20


class IngestFileError(Exception):
    """The file was rejected and nothing was written; str() says why, naming lines or entries."""


# --- directory -------------------------------------------------------------------------------


def ingest_directory_file(url: str, path: Path) -> str:
    """Upsert a directory JSON file (`{groups, users, levels, topics}`); returns a summary line."""
    started = time.perf_counter()
    # One document, checked whole and written in one transaction: the bar shows the stage.
    with tqdm(
        total=3,
        desc=path.name,
        bar_format="{desc}: {n}/{total}{postfix} [{elapsed}]",
        file=sys.stderr,
    ) as bar:
        _stage(bar, 0, "reading")
        raw = path.read_bytes()
        _stage(bar, 1, "checking")
        try:
            directory = DirectoryUpsert.model_validate_json(raw)
        except ValidationError as error:
            _stage(bar, 1, "rejected")
            raise _rejected(path, field_errors(error)) from None
        _stage(bar, 2, "writing")
        try:
            counts = asyncio.run(_upsert_directory(url, directory))
        except EntriesRejected as error:
            _stage(bar, 2, "rejected")
            raise _rejected(path, error.field_errors) from None
        _stage(bar, 3, "done")
    elapsed = time.perf_counter() - started
    return (
        f"{path.name}: upserted {counts.groups:,} groups, {counts.users:,} users"
        f" ({counts.memberships:,} memberships), {counts.levels:,} levels, {counts.topics:,} topics"
        f" in {elapsed:.1f} s"
    )


def _stage(bar: tqdm, done: int, name: str) -> None:
    bar.n = done
    bar.set_postfix_str(name)  # refreshes the bar


async def _upsert_directory(url: str, directory: DirectoryUpsert) -> DirectoryCounts:
    async with await psycopg.AsyncConnection.connect(url, application_name="reporting") as conn:
        counts = await service.upsert_directory(conn, directory)
        await conn.commit()
    return counts


def _rejected(path: Path, errors: list[FieldError]) -> IngestFileError:
    lines = [f"  {e.where or 'file'}: {e.msg}" for e in errors[:LISTED_BAD_LINES]]
    if len(errors) > LISTED_BAD_LINES:
        lines.append(f"  …and {len(errors) - LISTED_BAD_LINES:,} more")
    noun = "entry is" if len(errors) == 1 else "entries are"
    return IngestFileError(
        f"{path.name} rejected, nothing written: {len(errors):,} {noun} not valid\n"
        + "\n".join(lines)
    )


# --- attempts --------------------------------------------------------------------------------

# A parsed line: its number and the attempt, or what is wrong with it.
Parsed = tuple[int, AttemptCreate | str]


@dataclass
class _Load:
    """What loading a file found so far."""

    lines: int = 0
    inserted: int = 0
    bad_count: int = 0
    bad_first: list[tuple[int, str]] = field(default_factory=list)
    group_ids: set[str] = field(default_factory=set)

    def bad(self, found: Iterable[tuple[int, str]], count: int) -> None:
        self.bad_count += count
        self.bad_first = sorted([*self.bad_first, *found])[:LISTED_BAD_LINES]


def ingest_attempts_file(url: str, path: Path, *, chunk_lines: int = CHUNK_LINES) -> str:
    """Load a .jsonl or .csv file of attempts, all or nothing; returns a summary line."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise IngestFileError(f"{path.name}: an attempts file must be .jsonl or .csv")
    started = time.perf_counter()
    with (
        path.open("rb") as file,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=path.name,
            file=sys.stderr,
            mininterval=0.5,
        ) as bar,
    ):
        raw_lines = _counting(file, bar)
        parsed = _parse_csv(raw_lines) if suffix == ".csv" else _parse_jsonl(raw_lines)
        # A chunk is tens of thousands of acyclic objects: cyclic GC passes over them would
        # only cost time (a third of the parsing).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            load = asyncio.run(_load_attempts(url, parsed, bar, chunk_lines))
        finally:
            if gc_was_enabled:
                gc.enable()
    elapsed = time.perf_counter() - started
    if load.bad_count:
        listed = [f"  line {line}: {message}" for line, message in load.bad_first]
        if load.bad_count > len(listed):
            listed.append(f"  …and {load.bad_count - len(listed):,} more")
        noun = "bad line" if load.bad_count == 1 else "bad lines"
        raise IngestFileError(
            f"{path.name} rejected, nothing inserted: {load.bad_count:,} {noun}\n"
            + "\n".join(listed)
        )
    rate = load.lines / elapsed if elapsed > 0 else 0.0
    return (
        f"{path.name}: {load.lines:,} attempts read, {load.inserted:,} inserted,"
        f" {load.lines - load.inserted:,} duplicates in {elapsed:.1f} s ({rate:,.0f} attempts/s)"
    )


async def _load_attempts(url: str, parsed: Iterator[Parsed], bar: tqdm, chunk_lines: int) -> _Load:
    load = _Load()
    async with await psycopg.AsyncConnection.connect(url, application_name="reporting") as conn:
        chunk = list(islice(parsed, chunk_lines))
        while chunk:
            good = [(line, a) for line, a in chunk if isinstance(a, AttemptCreate)]
            bad = [(line, a) for line, a in chunk if isinstance(a, str)]
            load.lines += len(good)
            # Lines keep being checked after a bad one, so one run reports them all.
            await copy.stage(conn, good)
            total, unknown = await copy.unknown_references(conn, limit=LISTED_BAD_LINES)
            bad += [(u.position, "; ".join(m for _, m in u.problems())) for u in unknown]
            load.bad(bad, len(bad) - len(unknown) + total)
            if load.bad_count:
                chunk = list(islice(parsed, chunk_lines))
                continue
            # The server inserts this chunk while we parse the next one (sleep(0) sends the query).
            inserting = asyncio.create_task(copy.insert_staged(conn))
            await asyncio.sleep(0)
            chunk = list(islice(parsed, chunk_lines))
            inserted = await inserting
            load.inserted += inserted.count
            load.group_ids |= inserted.group_ids
            bar.set_postfix(inserted=f"{load.inserted:,}", refresh=False)
        if load.bad_count:
            await conn.rollback()
            return load
        await copy.notify_ingested(conn, load.group_ids)
        await conn.commit()
    return load


def _counting(file: Iterable[bytes], bar: tqdm) -> Iterator[bytes]:
    for raw in file:
        bar.update(len(raw))
        yield raw


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{e.where}: {e.msg}" if e.where else e.msg for e in field_errors(error))


def _parse_jsonl(raw_lines: Iterable[bytes]) -> Iterator[Parsed]:
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            yield number, AttemptCreate.model_validate_json(raw, strict=True)
        except ValidationError as error:
            yield number, _describe(error)


def _parse_csv(raw_lines: Iterable[bytes]) -> Iterator[Parsed]:
    reader = csv.reader(_decoded(raw_lines))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in ATTEMPT_FIELDS if name not in header]
    if missing:
        yield 1, f"the CSV header lacks the column(s) {', '.join(missing)}"
        return
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            yield reader.line_num, f"{len(row)} fields where the header has {len(header)}"
            continue
        try:
            yield reader.line_num, AttemptCreate.model_validate(dict(zip(header, row, strict=True)))
        except ValidationError as error:
            yield reader.line_num, _describe(error)


def _decoded(raw_lines: Iterable[bytes]) -> Iterator[str]:
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IngestFileError(
                f"line {number} is not UTF-8: rejected, nothing inserted"
            ) from None
        yield text.removeprefix("\ufeff") if number == 1 else text
