"""The local backend: files in a directory, HMAC-signed links, and `GET /files/...` on the API."""

import hashlib
import hmac
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from reporting.errors import Forbidden, Gone
from reporting.settings import (
    AuthSettings,
    DatabaseSettings,
    ExportSettings,
    Settings,
    StorageSettings,
    load_settings,
)
from reporting.storage import StorageError, build_store, export_key
from reporting.storage.local import LocalStore, files_secret
from tests.conftest import JWT_SECRET, api_client, make_settings

CSV_BYTES = "\ufeffuser_id,display_name\r\nu1,Иванова Мария\r\n".encode()


def _local(tmp_path: Path, **exports: object) -> tuple[LocalStore, Settings]:
    settings = make_settings(
        storage=StorageSettings(REPORTING_FILES_DIR=tmp_path / "files"),
        exports=ExportSettings(**exports),  # type: ignore[arg-type]
    )
    store = build_store(settings)
    assert isinstance(store, LocalStore)
    return store, settings


def _put(store: LocalStore, tmp_path: Path, key: str, data: bytes = CSV_BYTES) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    store.put_file(key, source, content_type="text/csv; charset=utf-8")


def _hand_signed(secret: bytes, base: str, key: str, expires: int, filename: str) -> str:
    """A link built from the documented scheme alone (HMAC-SHA256 over JSON [key, expires, fn])."""
    message = json.dumps([key, expires, filename], ensure_ascii=False).encode()
    sig = hmac.new(secret, message, hashlib.sha256).hexdigest()
    query = urlencode({"expires": expires, "fn": filename, "sig": sig})
    return f"{base}/files/{quote(key, safe='/')}?{query}"


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


# --- the store on its own ----------------------------------------------------------------------


def test_put_exists_delete_round_trip(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    key = export_key("", "7А", "e1", "csv")

    _put(store, tmp_path, key)

    assert store.exists(key)
    assert (tmp_path / "files" / "exports" / "7А" / "e1.csv").read_bytes() == CSV_BYTES
    assert not [p for p in (tmp_path / "files" / "exports" / "7А").iterdir() if p.name != "e1.csv"]
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # a missing key is not an error


def test_the_check_passes_on_a_usable_directory_and_names_an_unusable_one(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    store.check()
    assert [p.name for p in (tmp_path / "files").iterdir()] == []  # the probe leaves nothing

    (tmp_path / "files").rmdir()
    (tmp_path / "files").write_text("not a directory")
    with pytest.raises(StorageError, match=r"cannot store files under .*files"):
        store.check()


def test_links_are_capped_signed_and_placed_under_the_right_base(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    now = datetime.now(UTC)
    key = "exports/g1/e1.pdf"

    far = store.signed_url(key, expires_at=now + timedelta(days=1), filename="Отчёт.pdf")
    near = store.signed_url(
        key, expires_at=now + timedelta(minutes=10), filename="a.pdf", base_url="http://h:8/"
    )

    path, query = _parts(far)
    assert far.startswith("/files/")  # no public URL and no request: relative
    assert path == "/files/exports/g1/e1.pdf"
    assert query["fn"] == "Отчёт.pdf"
    assert abs(int(query["expires"]) - (now + timedelta(hours=1)).timestamp()) <= 2
    assert len(query["sig"]) == 64
    assert near.startswith("http://h:8/files/")
    assert abs(int(_parts(near)[1]["expires"]) - (now + timedelta(minutes=10)).timestamp()) <= 1

    public, _ = _local(tmp_path, REPORTING_PUBLIC_URL="https://reports.school.example/")
    link = public.signed_url(
        key, expires_at=now + timedelta(hours=2), filename="a.pdf", base_url="http://internal"
    )
    assert link.startswith("https://reports.school.example/files/exports/g1/e1.pdf?")
    with pytest.raises(ValueError, match="already be expired"):
        store.signed_url(key, expires_at=now - timedelta(seconds=5), filename="a.pdf")


def test_open_link_accepts_its_own_links_and_refuses_tampering(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    key = "exports/g1/e1.csv"
    _put(store, tmp_path, key)
    url = store.signed_url(key, expires_at=datetime.now(UTC) + timedelta(hours=1), filename="r.csv")
    _, q = _parts(url)

    path, name = store.open_link(key, expires=q["expires"], filename=q["fn"], signature=q["sig"])
    assert path.read_bytes() == CSV_BYTES and name == "r.csv"

    later = str(int(q["expires"]) + 3600)
    tampered = [
        ("exports/g1/other.csv", q["expires"], q["fn"], q["sig"]),  # another file
        (key, later, q["fn"], q["sig"]),  # a longer life
        (key, q["expires"], "evil.html", q["sig"]),  # another name
        (key, q["expires"], q["fn"], q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")),
        (key, q["expires"], q["fn"], None),
        (key, None, q["fn"], q["sig"]),
        (key, "soon", q["fn"], q["sig"]),
        (key, q["expires"], q["fn"], "ж" * 64),
    ]
    for k, expires, fn, sig in tampered:
        with pytest.raises(Forbidden):
            store.open_link(k, expires=expires, filename=fn, signature=sig)


def test_expired_and_deleted_links_are_gone(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    key = "exports/g1/e1.csv"
    _put(store, tmp_path, key)
    _, q = _parts(
        store.signed_url(key, expires_at=datetime.now(UTC) + timedelta(hours=1), filename="r.csv")
    )
    after_expiry = datetime.fromtimestamp(int(q["expires"]) + 1, UTC)

    with pytest.raises(Gone, match="expired"):
        store.open_link(
            key, expires=q["expires"], filename=q["fn"], signature=q["sig"], now=after_expiry
        )
    store.delete(key)
    with pytest.raises(Gone, match="no longer available"):
        store.open_link(key, expires=q["expires"], filename=q["fn"], signature=q["sig"])


@pytest.mark.parametrize(
    "key", ["../outside.csv", "exports/../../outside.csv", "/etc/passwd", "a//b", "a\\..\\b", ""]
)
def test_keys_that_leave_the_directory_are_refused(tmp_path: Path, key: str) -> None:
    store, _ = _local(tmp_path)
    source = tmp_path / "x.csv"
    source.write_bytes(b"x")

    with pytest.raises(StorageError, match="invalid storage key"):
        store.put_file(key, source, content_type="text/csv")
    with pytest.raises(ValueError):
        store.signed_url(key, expires_at=datetime.now(UTC) + timedelta(hours=1), filename="x")
    assert not store.exists(key)
    assert not (tmp_path / "outside.csv").exists()


def test_symlinks_inside_the_directory_are_not_followed(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("do not serve")
    (store.root / "exports").mkdir()
    (store.root / "exports" / "link.csv").symlink_to(secret_file)
    (store.root / "escape").symlink_to(tmp_path)

    for key in ("exports/link.csv", "escape/secret.txt"):
        with pytest.raises(ValueError, match="symbolic link"):
            store.path_for(key)
        assert not store.exists(key)


def test_put_file_reports_an_unwritable_directory(tmp_path: Path) -> None:
    store, _ = _local(tmp_path)
    (store.root / "exports").write_text("a file where a directory should be")
    source = tmp_path / "x.csv"
    source.write_bytes(b"x")

    with pytest.raises(StorageError, match=r"cannot store 'exports/g1/e1\.csv'"):
        store.put_file("exports/g1/e1.csv", source, content_type="text/csv")


# --- the signing secret ------------------------------------------------------------------------


def test_secret_comes_from_the_setting_then_the_jwt_secret() -> None:
    explicit = make_settings(storage=StorageSettings(REPORTING_FILES_SECRET="f" * 32))
    derived = make_settings()

    assert files_secret(explicit) == b"f" * 32
    assert files_secret(derived) == files_secret(make_settings())  # stable across processes
    assert JWT_SECRET.encode() not in files_secret(derived)
    assert len(files_secret(derived)) == 32


def test_generated_secret_is_kept_private_and_shared(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = load_settings(
        require_jwt=False,
        auth=AuthSettings.model_construct(
            jwt_secret=None, jwt_public_key=None, jwt_audience=None, jwt_issuer=None
        ),
        database=DatabaseSettings(REPORTING_DATA_DIR=data_dir),
        storage=StorageSettings(),
    )
    found: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: found.append(files_secret(settings))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(found)) == 1 and len(found[0]) >= 32
    mode = stat.S_IMODE(os.stat(data_dir / "files-secret").st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == ["files-secret"]
    assert files_secret(settings) == found[0]


# --- GET /files/... through the API ------------------------------------------------------------


async def test_download_route_serves_signed_links(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, storage=StorageSettings(REPORTING_FILES_DIR=tmp_path / "f"))
    store = build_store(settings)  # what an export worker on the same settings would build
    assert isinstance(store, LocalStore)
    key = export_key("", "7А", "e1", "csv")
    _put(store, tmp_path, key)
    secret = files_secret(settings)

    async with api_client(settings, db_url) as api:
        link = store.signed_url(
            key,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            filename="Отчёт 7А.csv",
            base_url="http://testserver",
        )
        ok = await api.get(link)
        assert ok.status_code == 200, ok.text
        assert ok.content == CSV_BYTES
        assert ok.headers["content-type"] == "text/csv; charset=utf-8"
        disposition = ok.headers["content-disposition"]
        assert disposition.startswith("attachment;")
        assert "filename*=UTF-8''" + quote("Отчёт 7А.csv", safe="") in disposition
        assert ok.headers["cache-control"] == "private, no-store"
        # HEAD, as download managers and link previews ask first: the headers, no body.
        head = await api.head(link)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(CSV_BYTES))
        assert head.headers["content-disposition"] == disposition

        tampered = link.replace("Отчёт", "Otchet").replace(quote("Отчёт"), "Otchet")
        for bad in (tampered, link.split("?")[0], link.replace("expires=", "expires=1")):
            response = await api.get(bad)
            assert response.status_code == 403, bad
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["status"] == 403

        past = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
        expired = await api.get(_hand_signed(secret, "", key, past, "r.csv"))
        assert expired.status_code == 410
        assert "expired" in expired.json()["detail"]
        assert "GET /stats/exports/" in expired.json()["detail"]  # where a fresh link comes from

        outside = tmp_path / "outside.csv"
        outside.write_text("private")
        for evil in ("../outside.csv", "exports/../../outside.csv"):
            future = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
            escaped = _hand_signed(secret, "", evil, future, "x.csv").replace("..", "%2E%2E")
            response = await api.get(escaped)
            assert response.status_code == 403, evil
            assert b"private" not in response.content

        store.delete(key)
        gone = await api.get(link)
        assert gone.status_code == 410
        assert gone.headers["content-type"].startswith("application/problem+json")


async def test_download_route_is_absent_with_s3(db_url: str) -> None:
    settings = make_settings(
        db_url,
        storage=StorageSettings(
            OBJECT_STORAGE_ENDPOINT="http://127.0.0.1:9",
            OBJECT_STORAGE_BUCKET="reports",
            OBJECT_STORAGE_ACCESS_KEY="k",
            OBJECT_STORAGE_SECRET_KEY="s",
        ),
    )
    async with api_client(settings, db_url) as api:
        response = await api.get("/files/exports/g1/e1.csv?expires=1&fn=a&sig=b")
    assert response.status_code == 404
    assert "object storage" in response.json()["detail"]
