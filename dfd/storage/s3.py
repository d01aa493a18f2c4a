"""The S3 backend of :mod:`dfd.storage`: any S3-compatible object store through boto3.

``S3Store("s3://bucket/prefix", endpoint_url=...)`` implements every primitive of :class:`dfd.storage.Store`.
Keys are stored under ``prefix/``. Credentials come only from the standard AWS chain (environment,
``AWS_PROFILE``, instance or task role); the endpoint from ``S3_ENDPOINT_URL`` for non-AWS stores.

Why it is safe:

* Every write is atomic by S3's nature: a single PUT, or a multipart upload that becomes visible only when
  it is completed (boto3 aborts it on failure). Readers never see half an object.
* ``write_if_unchanged`` is a real compare-and-swap: ``PutObject`` with ``If-Match: <etag>`` (or
  ``If-None-Match: *`` to create). The store answers ``412 PreconditionFailed`` to the loser, which becomes
  :class:`~dfd.storage.Conflict`. Before the first conditional write to a bucket the store is probed once,
  and a store that silently ignores the condition is refused rather than trusted (no lost updates).
* botocore retries in ``standard`` mode (or ``AWS_RETRY_MODE``) with short connect timeouts, and every
  botocore error becomes a one-line :class:`~dfd.storage.StorageError` that says what to fix.

Tuning through the environment (all optional): ``AWS_MAX_ATTEMPTS`` (5), ``AWS_RETRY_MODE``
(``standard``), ``S3_CONNECT_TIMEOUT`` (5 s), ``S3_READ_TIMEOUT`` (60 s), ``S3_MAX_POOL_CONNECTIONS`` (32,
the number of concurrent requests one process can keep open: the client is shared and thread-safe).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from dfd.storage.base import Conflict, NotFound, ObjectInfo, StorageError, Store, clean_key, escape_name, unescape_name

MB = 1024 * 1024
# Objects above this size go up and down in parts, several at once; each part is retried on its own.
TRANSFER = dict(multipart_threshold=16 * MB, multipart_chunksize=8 * MB, max_concurrency=4, use_threads=True)

_CLIENTS: dict[tuple, Any] = {}
_CHECKED_BUCKETS: set[tuple] = set()
_CAS_VERIFIED: set[tuple] = set()
_LOCK = threading.Lock()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (the prefix may be empty)."""
    if not url.startswith("s3://"):
        raise StorageError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket or "/" in bucket:
        raise StorageError(f"S3 URL {url!r} names no bucket (expected s3://bucket/prefix)")
    return bucket, clean_key(prefix)


class S3Store(Store):
    """A prefix in an S3 bucket. The boto3 client is shared by every store of the process with the same
    endpoint, credentials and options, and is safe to use from many threads at once."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        *,
        max_attempts: int | None = None,
        retry_mode: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_pool_connections: int | None = None,
        page_size: int = 1000,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = (endpoint_url or "").strip() or None
        self.page_size = page_size
        given = {"max_attempts": max_attempts, "retry_mode": retry_mode, "connect_timeout": connect_timeout,
                 "read_timeout": read_timeout, "max_pool_connections": max_pool_connections}
        if any(not v for v in given.values()):  # the rest come from the settings, the one reader of the environment
            from dfd.settings import Settings

            defaults = Settings.from_env().s3_options()
            given = {k: v or defaults[k] for k, v in given.items()}
        self._options = {**given, "max_attempts": int(given["max_attempts"]),
                         "max_pool_connections": int(given["max_pool_connections"])}
        self.client = _client(self.endpoint_url, self._options)
        self._transfer = TransferConfig(**TRANSFER, max_io_queue=100)
        # Called with the bytes transferred so far by upload_file/download_file (progress, fault tests).
        self.transfer_callback: Callable[[int], None] | None = None

    # --- helpers --------------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.endpoint_url or "AWS S3"

    def _key(self, key: str) -> str:
        key = _s3_name(key)
        if not key:
            raise StorageError(f"an object key is required under {self.url}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folder(self, prefix: str) -> str:
        """The S3 prefix (ending with '/', or empty for the bucket root) of a folder key."""
        prefix = _s3_name(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix and prefix else (self.prefix or prefix)
        return f"{full}/" if full else ""

    def _rel(self, full_key: str) -> str:
        """The store key (escaped like every key, see :func:`dfd.storage.escape_name`) of a full S3 key."""
        return escape_name(full_key[len(self.prefix) + 1 :] if self.prefix else full_key)

    def _identity(self) -> tuple:
        return (self.endpoint_url, self.bucket, _credential_fingerprint())

    def _call(self, op: str, key: str, fn: Callable[[], Any]) -> Any:
        """Run one boto3 call, turning every botocore failure into a one-line storage error."""
        self._check_bucket()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - re-raised as a StorageError below, or unchanged
            raise self._error(exc, op, key) from None

    def _check_bucket(self) -> None:
        """Once per process and bucket: make sure it exists and the credentials work.

        Some stores (SeaweedFS, MinIO with auto-create) would silently create a missing bucket on the first
        PUT, and a HEAD on a missing bucket is only a bare 404; checking up front gives a clear message.
        """
        ident = self._identity()
        if ident in _CHECKED_BUCKETS:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or _code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"bucket '{self.bucket}' does not exist at {self.where}") from None
            # A HEAD error has no body: ask again with a request whose error says why (bad key, signature).
            try:
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1, Prefix=self._folder(""))
            except Exception as exc2:  # noqa: BLE001
                raise self._error(exc2, "open", "") from None
            # Listing works: HEAD on the bucket is merely not allowed for these credentials.
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "open", "") from None
        with _LOCK:
            _CHECKED_BUCKETS.add(ident)

    def _error(self, exc: BaseException, op: str, key: str) -> StorageError:
        """A short, actionable :class:`StorageError` for a botocore/boto3 failure."""
        if isinstance(exc, StorageError):
            return exc
        exc = _root_cause(exc)
        what = self.describe(key) if key else self.url
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return StorageError(
                f"no usable AWS credentials for {self.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run with an instance role"
            )
        if isinstance(exc, bexc.EndpointConnectionError | bexc.ConnectTimeoutError):
            return StorageError(f"cannot reach S3 endpoint {self.where} (for {what}): is it running and reachable?")
        if isinstance(exc, bexc.ReadTimeoutError | bexc.ConnectionClosedError | bexc.ConnectionError):
            return StorageError(f"connection to S3 endpoint {self.where} failed during {op} of {what}")
        if isinstance(exc, bexc.ClientError):
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in {"NoSuchKey", "NotFound"} or (code == "404" and op != "open"):
                return NotFound(f"not found: {what}")
            if code == "NoSuchBucket":
                return StorageError(f"bucket '{self.bucket}' does not exist at {self.where}")
            if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status == 412:
                return Conflict(f"{what} changed since it was read; retry")
            if code == "InvalidAccessKeyId":
                return StorageError(
                    f"S3 at {self.where} does not know this access key (InvalidAccessKeyId): check "
                    "AWS_ACCESS_KEY_ID or the AWS profile"
                )
            if code == "SignatureDoesNotMatch":
                return StorageError(
                    f"S3 at {self.where} rejected the credentials (SignatureDoesNotMatch): check "
                    "AWS_SECRET_ACCESS_KEY or the AWS profile"
                )
            if code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"} or status == 403:
                return StorageError(
                    f"access denied: {op} of {what} at {self.where}; check the credentials and their permissions"
                )
            message = (exc.response.get("Error", {}).get("Message") or "").splitlines()[0:1]
            return StorageError(f"S3 {op} of {what} failed: {code} {message[0] if message else ''}".rstrip())
        if isinstance(exc, bexc.BotoCoreError):
            return StorageError(f"S3 {op} of {what} failed: {exc}".splitlines()[0])
        if isinstance(exc, OSError):
            return StorageError(f"S3 {op} of {what} failed: {exc.strerror or exc}")
        return StorageError(f"S3 {op} of {what} failed: {type(exc).__name__}: {exc}".splitlines()[0])

    # --- primitives -----------------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)

        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read()

        return self._call("read", key, get)

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data)))

    def exists(self, key: str) -> bool:
        try:
            _s3_name(key)
        except StorageError:
            return False  # a key that could leave the store never exists (as in the local store)
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        full = self._key(key)
        head = self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        return ObjectInfo(clean_key(key), int(head["ContentLength"]), head["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under the folder ``prefix``, recursively, in key (UTF-8 byte) order; if ``prefix``
        names an object rather than a folder, just that object (as the local store does).

        Servers disagree on listing order (AWS: byte order; SeaweedFS: folder by folder, ``a/`` before
        ``a-b``), so the tree is walked one folder level at a time (``Delimiter='/'``, paginated) and each
        level is merged in byte order. Memory is bounded by the largest single folder level.
        """
        folder = self._folder(prefix)
        self._check_bucket()
        found = False
        for info in self._walk(folder, prefix):
            found = True
            yield info
        if not found and clean_key(prefix):
            with contextlib.suppress(NotFound):
                yield self.stat(prefix)

    def _level(self, folder: str, what: str) -> tuple[list[dict], list[str]]:
        """The objects and the sub-folder names directly inside ``folder`` (an S3 prefix)."""
        objects: list[dict] = []
        dirs: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/", PaginationConfig={"PageSize": self.page_size}
            ):
                objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
                dirs.extend(c["Prefix"][len(folder) :] for c in page.get("CommonPrefixes", []))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "list", what) from None
        return objects, [d for d in dirs if d.strip("/")]

    def _walk(self, top: str, what: str) -> Iterator[ObjectInfo]:
        """Objects under the S3 prefix ``top`` in key order, one folder level at a time, with an explicit
        stack of open levels (no recursion, whatever the depth)."""
        stack = [iter(self._sorted_level(top, what))]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
            elif entry[1] is None:
                stack.append(iter(self._sorted_level(entry[0], what)))
            else:
                obj = entry[1]
                yield ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]), obj["LastModified"].timestamp())

    def _sorted_level(self, folder: str, what: str) -> list[tuple[str, dict | None]]:
        """One level as (full prefix of a sub-folder, None) or (full key, object), in key order."""
        objects, dirs = self._level(folder, what)
        # A sub-folder "a/" sorts as the string "a/", exactly where its keys sort among the objects.
        entries: list[tuple[str, dict | None]] = [(o["Key"], o) for o in objects]
        entries += [(folder + d, None) for d in dirs]
        entries.sort(key=lambda e: escape_name(e[0][len(folder) :]))
        return entries

    def list_dirs(self, prefix: str = "") -> list[str]:
        folder = self._folder(prefix)
        self._check_bucket()
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/", PaginationConfig={"PageSize": self.page_size}
            ):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(folder) :].rstrip("/")
                    if name and not name.startswith("."):
                        names.append(escape_name(name))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "list", prefix) from None
        return sorted(names)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def upload_file(self, local_path: str | Path, key: str) -> None:
        """Upload a local file: a single PUT below 16 MB; above, 8 MB parts, 4 at a time. Either way the
        object appears only when the whole upload is complete (a failed multipart upload is aborted)."""
        full = self._key(key)
        local_path = Path(local_path)
        try:
            size = local_path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot upload {local_path}: {exc.strerror or exc}") from None
        if not local_path.is_file():
            raise StorageError(f"cannot upload {local_path}: not a file")
        if size < TRANSFER["multipart_threshold"]:
            # boto3's transfer manager starts and stops a thread pool per call: a plain PUT is ~2x faster
            # for the many small files of a run, a data set or a batch.
            def put() -> None:
                with local_path.open("rb") as fh:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=fh)
                if self.transfer_callback:
                    self.transfer_callback(size)

            self._call("upload", key, put)
            return
        self._call(
            "upload",
            key,
            lambda: self.client.upload_file(
                str(local_path), self.bucket, full, Config=self._transfer, Callback=self.transfer_callback
            ),
        )

    def download_file(self, key: str, local_path: str | Path) -> Path:
        """Download to a temporary file beside ``local_path``, then rename: the local file is whole or absent.
        Small objects come in one streamed GET; large ones in parallel ranged GETs (boto3's transfer)."""
        full = self._key(key)
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=local_path.parent)
        os.close(fd)

        def fetch() -> None:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            body = resp["Body"]
            if int(resp.get("ContentLength") or 0) >= TRANSFER["multipart_threshold"]:
                body.close()
                self.client.download_file(
                    self.bucket, full, tmp, Config=self._transfer, Callback=self.transfer_callback
                )
                return
            with open(tmp, "wb") as out:
                for block in iter(lambda: body.read(1 << 20), b""):
                    out.write(block)
                    if self.transfer_callback:
                        self.transfer_callback(len(block))

        try:
            self._call("download", key, fetch)
            os.replace(tmp, local_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return local_path

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        full = self._key(key)

        def get() -> tuple[bytes, str]:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            return resp["Body"].read(), resp["ETag"]

        try:
            return self._call("read", key, get)
        except NotFound:
            return None, None

    def write_if_unchanged(self, key: str, data: bytes, token: str | None) -> None:
        """Compare-and-swap with a conditional PUT (``If-Match: token``, or ``If-None-Match: *`` when
        ``token`` is None). The loser of a race gets :class:`Conflict` and must re-read."""
        full = self._key(key)
        self._verify_conditional_writes()
        condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
        data = bytes(data)
        try:
            self._call(
                "conditional write",
                key,
                lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **condition),
            )
        except Conflict:
            # A retried PUT whose first attempt did succeed is answered 412 too: if the object now holds
            # exactly our bytes, the write happened and nothing was lost.
            current, _ = self.read_versioned(key)
            if current != data:
                raise

    def _verify_conditional_writes(self) -> None:
        """Once per process and bucket: check that the store enforces ``If-None-Match``/``If-Match`` on PUT.

        Stores that ignore the headers would let two promotions both "win"; refuse them with a clear error
        instead of losing updates silently.
        """
        ident = (id(self.client), self.bucket)  # clients live as long as the process (see _client)
        if ident in _CAS_VERIFIED:
            return
        probe = self._key(f".dfd-cas-probe/{uuid.uuid4().hex}")

        def refused(**condition: str) -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"2", **condition)
            except bexc.ClientError as exc:
                if _code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"}:
                    return True
                raise
            return False

        try:
            self._call(
                "conditional write probe",
                "",
                lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"1", IfNoneMatch="*"),
            )
            ok = self._call("conditional write probe", "", lambda: refused(IfNoneMatch="*")) and self._call(
                "conditional write probe", "", lambda: refused(IfMatch='"00000000000000000000000000000000"')
            )
        finally:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=probe)
        if not ok:
            raise StorageError(
                f"the S3 store at {self.where} ignores conditional writes (If-None-Match/If-Match on PUT), "
                "so the champion pointer cannot be updated safely; use a store that supports them"
            )
        with _LOCK:
            _CAS_VERIFIED.add(ident)

    def child(self, prefix: str) -> S3Store:
        store = S3Store(  # the URL names the real (unescaped) S3 prefix
            f"s3://{self.bucket}/{self._folder(prefix)}", endpoint_url=self.endpoint_url, page_size=self.page_size,
            **self._options,
        )
        store.transfer_callback = self.transfer_callback
        return store


def _s3_name(key: str) -> str:
    """The S3 key text of a store key: cleaned and unescaped (see :func:`dfd.storage.escape_name`).

    A backslash is an ordinary character in an S3 key (AWS keeps it), but some S3-compatible servers read it
    as '/' (SeaweedFS stores ``a\\b`` as ``a/b``), so a key with a ``..`` part between backslashes is refused
    like ``..`` itself. A key naming bytes that are not UTF-8 is refused too: S3 keys are UTF-8 text."""
    name = unescape_name(clean_key(key))
    if "\\" in name and ".." in re.split(r"[/\\]", name):
        raise StorageError(f"invalid key {key!r}: '..' is not allowed")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageError(f"invalid key {key!r}: an S3 key must be UTF-8 text") from None
    return name


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _root_cause(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's wrappers (S3UploadFailedError, RetriesExceededError)."""
    for _ in range(10):
        if isinstance(exc, bexc.ClientError | bexc.BotoCoreError):
            return exc
        nxt = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
        if nxt is None or nxt is exc:
            return exc
        exc = nxt
    return exc


def _credential_fingerprint() -> tuple:
    """What selects the credentials in the standard chain, so clients (and checks) are not reused across
    a change of credentials in the environment."""
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    )
    return tuple(os.environ.get(n, "") for n in names)


def _client(endpoint_url: str | None, options: dict[str, Any]) -> Any:
    """A boto3 S3 client for this endpoint, credentials and options, created once and shared (clients are
    thread-safe; sessions are not, so each client gets its own session, created under a lock)."""
    key = (endpoint_url, tuple(sorted(options.items())), _credential_fingerprint())
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        session = boto3.session.Session()
        config = Config(
            retries={"mode": options["retry_mode"], "max_attempts": options["max_attempts"]},
            connect_timeout=options["connect_timeout"],
            read_timeout=options["read_timeout"],
            max_pool_connections=options["max_pool_connections"],
            # Self-hosted stores are addressed by path (no bucket sub-domains); AWS chooses itself.
            s3={"addressing_style": "path"} if endpoint_url else {},
            # Checksums only where the API requires them: older self-hosted stores reject the newer ones.
            request_checksum_calculation="when_required" if endpoint_url else "when_supported",
            response_checksum_validation="when_required" if endpoint_url else "when_supported",
        )
        client = session.client(
            "s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1", config=config
        )
        _CLIENTS[key] = client
        return client
