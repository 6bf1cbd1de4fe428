"""The S3 backend against moto's real S3 server (pre-signed links checked from the link itself:
moto never verifies their signature or expiry)."""

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from reporting.settings import ExportSettings, StorageSettings
from reporting.storage import StorageError, build_store, export_key
from reporting.storage.s3 import S3Store
from tests.conftest import make_settings
from tests.servers import S3Server, free_port

CSV = "text/csv; charset=utf-8"


def _store(storage: StorageSettings, *, ttl_hours: float = 1) -> S3Store:
    settings = make_settings(
        storage=storage, exports=ExportSettings(REPORTING_SIGNED_URL_TTL_HOURS=ttl_hours)
    )
    store = build_store(settings)
    assert isinstance(store, S3Store)
    return store


def _file(tmp_path: Path, content: str = "user_id,display_name\nu1,Иванова Мария\n") -> Path:
    path = tmp_path / "report.csv"
    path.write_text(content, encoding="utf-8-sig")
    return path


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_put_exists_delete_round_trip(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = _store(s3_server.storage_settings(s3_bucket, prefix="school-1/"))
    key = export_key("school-1/", "7А", str(uuid.uuid4()), "csv")
    source = _file(tmp_path)

    assert not store.exists(key)
    store.put_file(key, source, content_type=CSV)

    assert store.exists(key)
    body, content_type = s3_server.get_object(s3_bucket, key)
    assert body == source.read_bytes()
    assert content_type == CSV
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # a missing key is not an error


def test_large_file_goes_up_in_parts(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = _store(s3_server.storage_settings(s3_bucket))
    big = tmp_path / "big.pdf"
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with big.open("wb") as out:
        for _ in range(17):  # over the 16 MiB multipart threshold
            out.write(chunk)
    key = export_key("", "g1", "big", "pdf")

    store.put_file(key, big, content_type="application/pdf")

    head = s3_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == 17 * len(chunk)
    assert head["ETag"].strip('"').endswith("-3")  # 8 MiB parts: a multipart ETag counts them
    body, _ = s3_server.get_object(s3_bucket, key)
    assert body == big.read_bytes()


def test_presigned_link_downloads_with_sigv4_and_the_file_name(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    store = _store(s3_server.storage_settings(s3_bucket))
    key = export_key("", "7А", str(uuid.uuid4()), "csv")
    source = _file(tmp_path)
    store.put_file(key, source, content_type=CSV)
    signed_at = datetime.now(UTC)

    url = store.signed_url(key, expires_at=signed_at + timedelta(hours=24), filename="Отчёт 7А.csv")

    # Path-style under the configured endpoint (a custom endpoint has no virtual-host DNS).
    assert url.startswith(f"{s3_server.endpoint}/{s3_bucket}/exports/")
    query = _query(url)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "3600"  # REPORTING_SIGNED_URL_TTL_HOURS=1 wins over 24 h
    amz_date = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((amz_date - signed_at).total_seconds()) < 60
    assert query["X-Amz-Credential"].endswith("/us-east-1/s3/aws4_request")
    assert query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64
    assert (
        "filename*=UTF-8''" + quote("Отчёт 7А.csv", safe="")
        in query["response-content-disposition"]
    )

    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == source.read_bytes()
    assert response.headers["content-type"] == CSV
    assert quote("Отчёт 7А.csv", safe="") in response.headers["content-disposition"]


def test_link_never_outlives_the_export(s3_server: S3Server, s3_bucket: str) -> None:
    store = _store(s3_server.storage_settings(s3_bucket), ttl_hours=2)
    key = export_key("", "g1", "e1", "pdf")
    now = datetime.now(UTC)

    long_lived = _query(store.signed_url(key, expires_at=now + timedelta(days=1), filename="a.pdf"))
    short_lived = _query(
        store.signed_url(key, expires_at=now + timedelta(minutes=30), filename="a.pdf")
    )

    assert long_lived["X-Amz-Expires"] == "7200"
    assert 1790 <= int(short_lived["X-Amz-Expires"]) <= 1800
    with pytest.raises(ValueError, match="already be expired"):
        store.signed_url(key, expires_at=now - timedelta(seconds=1), filename="a.pdf")


def test_unreachable_store_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    store = _store(
        StorageSettings(
            OBJECT_STORAGE_ENDPOINT=down,
            OBJECT_STORAGE_BUCKET="reports",
            OBJECT_STORAGE_ACCESS_KEY="k",
            OBJECT_STORAGE_SECRET_KEY="s",
        )
    )
    source = _file(tmp_path)

    started = time.monotonic()
    with pytest.raises(StorageError) as put_error:
        store.put_file("exports/g1/e1.csv", source, content_type=CSV)
    with pytest.raises(StorageError) as exists_error:
        store.exists("exports/g1/e1.csv")
    with pytest.raises(StorageError):
        store.delete("exports/g1/e1.csv")

    assert time.monotonic() - started < 5
    assert down in str(put_error.value)
    assert "Could not connect" in str(put_error.value)
    assert "s3://reports/exports/g1/e1.csv" in str(exists_error.value)


def test_missing_bucket_is_named(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server.storage_settings("no-such-bucket-here"))

    with pytest.raises(StorageError, match="the bucket does not exist"):
        store.put_file("exports/g1/e1.csv", _file(tmp_path), content_type=CSV)
    with pytest.raises(StorageError, match=r"'no-such-bucket-here'.*does not exist"):
        store.check()


def test_healthy_bucket_passes_the_check(s3_server: S3Server, s3_bucket: str) -> None:
    _store(s3_server.storage_settings(s3_bucket)).check()


def test_export_key_follows_the_contract_and_refuses_unsafe_ids() -> None:
    assert export_key("tenant/", "7А", "e1", "xlsx") == "tenant/exports/7А/e1.xlsx"
    assert export_key("", "g1", "e1", "csv") == "exports/g1/e1.csv"
    for bad in ("../etc", "a/b", "..", "", "a\nb", "a\\b"):
        with pytest.raises(ValueError, match="cannot be part of a storage key"):
            export_key("", bad, "e1", "csv")
