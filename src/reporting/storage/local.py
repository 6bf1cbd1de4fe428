"""Exports kept in a local directory and served by the API through HMAC-signed links.

A link is `{base}/files/{key}?expires={unix}&fn={filename}&sig={hex}`, where `sig` is
HMAC-SHA256 over (key, expires, filename) with the files secret. The API and the export workers
must agree on that secret: REPORTING_FILES_SECRET, else one derived from REPORTING_JWT_SECRET,
else one generated once into the data directory (`files_secret`).
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from reporting.errors import Forbidden, Gone
from reporting.settings import Settings
from reporting.storage.base import StorageError, link_expires_at

# Changing the label invalidates every link derived from the JWT secret; keep it fixed.
_DERIVATION_LABEL = b"reporting/files-link-signing/v1"
_SECRET_FILE = "files-secret"
_BAD_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")


def files_secret(settings: Settings) -> bytes:
    """The key that signs local file links (see the module docstring for the order)."""
    if settings.storage.files_secret is not None:
        return settings.storage.files_secret.get_secret_value().encode()
    if settings.auth.jwt_secret is not None:
        jwt_secret = settings.auth.jwt_secret.get_secret_value().encode()
        return hmac.new(jwt_secret, _DERIVATION_LABEL, hashlib.sha256).digest()
    return _stored_secret(settings.database.data_dir / _SECRET_FILE)


def _stored_secret(path: Path) -> bytes:
    """Read the generated secret, creating it first if missing. Written whole to a temp file and
    hard-linked into place, so two processes starting together end up with the same one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".files-secret-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_urlsafe(32).encode())
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race; use its secret
        finally:
            os.unlink(tmp)
    secret = path.read_bytes().strip()
    if len(secret) < 16:
        raise StorageError(f"the files secret in {path} is too short; delete it to regenerate")
    return secret


def split_key(key: str) -> list[str]:
    """The key's path segments; ValueError for anything that could leave the directory."""
    if not key or key.startswith("/") or _BAD_CHARS.search(key):
        raise ValueError(f"invalid storage key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return parts


class LocalStore:
    """An ObjectStore over a directory; the API's `GET /files/...` serves what it signs."""

    def __init__(
        self, root: Path, secret: bytes, *, link_ttl: timedelta, public_url: str | None = None
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._secret = secret
        self.link_ttl = link_ttl
        self.public_url = public_url.rstrip("/") if public_url else None

    def path_for(self, key: str) -> Path:
        """Where `key` lives; ValueError if the key, or a symlink on its way, leaves the root."""
        path = self.root.joinpath(*split_key(key))
        # The root is resolved and the key has no `.`/`..`: any difference after resolving is a
        # symbolic link on the way, whether it points inside the directory or out of it.
        if os.path.realpath(path) != str(path):
            raise ValueError(f"storage key {key!r} goes through a symbolic link")
        return path

    def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        """Copy into place atomically: a reader sees the whole file or none. The content type
        follows from the extension when served (`content_type_for`)."""
        try:
            target = self.path_for(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except (OSError, ValueError) as error:
            raise StorageError(f"cannot store {key!r} under {self.root}: {error}") from error

    def delete(self, key: str) -> None:
        try:
            self.path_for(key).unlink(missing_ok=True)
        except (OSError, ValueError) as error:
            raise StorageError(f"cannot delete {key!r} under {self.root}: {error}") from error

    def exists(self, key: str) -> bool:
        try:
            return self.path_for(key).is_file()
        except ValueError:
            return False

    def check(self) -> None:
        try:
            with tempfile.TemporaryFile(dir=self.root, prefix=".check-"):
                pass
        except OSError as error:
            raise StorageError(f"cannot store files under {self.root}: {error}") from error

    def signed_url(
        self, key: str, *, expires_at: datetime, filename: str, base_url: str | None = None
    ) -> str:
        split_key(key)
        expires = int(link_expires_at(expires_at, self.link_ttl).timestamp())
        query = urlencode(
            {"expires": expires, "fn": filename, "sig": self._sign(key, expires, filename)}
        )
        base = self.public_url or (base_url.rstrip("/") if base_url else "")
        return f"{base}/files/{quote(key, safe='/')}?{query}"

    def _sign(self, key: str, expires: int, filename: str) -> str:
        # JSON keeps the three fields unambiguous whatever characters they hold.
        message = json.dumps([key, expires, filename], ensure_ascii=False).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def open_link(
        self,
        key: str,
        *,
        expires: str | None,
        filename: str | None,
        signature: str | None,
        now: datetime | None = None,
    ) -> tuple[Path, str]:
        """Check a link and return (file path, download name). Forbidden for a missing,
        tampered or unsafe link; Gone once it expired or its file was deleted."""
        if not expires or not expires.isdigit() or filename is None or not signature:
            raise Forbidden("The link is incomplete: it needs expires, fn and sig.")
        expected = self._sign(key, int(expires), filename)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Forbidden("The link's signature is not valid.")
        if int(expires) <= (now or datetime.now(UTC)).timestamp():
            raise Gone(
                "The link has expired; read the export again (GET /stats/exports/{id})"
                " for a fresh one."
            )
        try:
            path = self.path_for(key)
        except ValueError:
            raise Forbidden("The link points outside the storage directory.") from None
        if not path.is_file():
            raise Gone("The file is no longer available: the export has expired.")
        return path, filename
