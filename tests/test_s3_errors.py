"""S3 failures give one short line that says what to fix, and an outage mid-run leaves nothing half-published.

All against the real SeaweedFS server of the session (credentials enforced), or a closed loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from s3server import free_port

from dfd.registry import COMPLETE, champion_version, is_complete, list_versions, publish_run, run_key, set_champion
from dfd.storage import StorageError, open_store
from dfd.storage.s3 import S3Store

pytestmark = pytest.mark.s3


def one_line(exc: BaseException, *forbidden: str) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 240, text
    assert "Traceback" not in text
    for secret in forbidden:
        assert secret not in text
    return text


def test_missing_bucket_is_named_and_not_created(s3_env, s3_server):
    store = open_store("s3://no-such-bucket-dfd/runs")
    for action in (lambda: store.read_bytes("x"), lambda: store.write_bytes("x", b"1"),
                   lambda: list(store.list()), lambda: store.exists("x"), lambda: store.list_dirs()):
        with pytest.raises(StorageError) as info:
            action()
        msg = one_line(info.value)
        assert msg == f"bucket 'no-such-bucket-dfd' does not exist at {s3_server.endpoint}"
    # SeaweedFS would create a bucket on a PUT by an admin; the store must not have let that happen.
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-dfd" not in names


def test_access_denied_for_a_read_only_user(s3_env, s3_server, monkeypatch):
    open_store(s3_env).write_bytes("seen.txt", b"hello")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.reader_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.reader_secret)
    store = open_store(s3_env)
    assert store.read_bytes("seen.txt") == b"hello"  # reading is allowed
    with pytest.raises(StorageError) as info:
        store.write_bytes("runs/v1/model.keras", b"x")
    msg = one_line(info.value, s3_server.reader_secret)
    assert msg.startswith("access denied: write of s3://") and "runs/v1/model.keras" in msg
    assert s3_server.endpoint in msg


def test_wrong_secret_key(s3_env, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    with pytest.raises(StorageError) as info:
        open_store(s3_env).read_bytes("anything")
    msg = one_line(info.value, "not-the-secret-0123456789")
    assert "rejected the credentials (SignatureDoesNotMatch)" in msg and "AWS_SECRET_ACCESS_KEY" in msg


def test_unknown_access_key(s3_env, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN000")
    with pytest.raises(StorageError) as info:
        list(open_store(s3_env).list())
    msg = one_line(info.value)
    assert "does not know this access key (InvalidAccessKeyId)" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_no_credentials_anywhere(s3_env, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as info:
        open_store(s3_env).read_bytes("x")
    assert one_line(info.value).startswith("no usable AWS credentials for s3://")


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("S3_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_store(s3_env).read_bytes("runs/x")
    assert time.monotonic() - start < 10
    assert one_line(info.value).startswith(f"cannot reach S3 endpoint {closed}")


def test_a_store_that_ignores_conditional_writes_is_refused(s3_env):
    # Simulate a server that drops If-Match/If-None-Match (this one honours them): strip the headers
    # from the requests of a dedicated client.
    store = S3Store(s3_env, endpoint_url=os.environ["S3_ENDPOINT_URL"], max_pool_connections=3)

    def drop_conditions(params, **_):
        params.pop("IfNoneMatch", None)
        params.pop("IfMatch", None)

    store.client.meta.events.register("provide-client-params.s3.PutObject", drop_conditions)
    try:
        with pytest.raises(StorageError) as info:
            store.write_if_unchanged("champion.json", b"{}", None)
        assert "ignores conditional writes" in one_line(info.value)
        assert not store.exists("champion.json")
    finally:
        store.client.meta.events.unregister("provide-client-params.s3.PutObject", drop_conditions)


def test_server_stopped_mid_multipart_upload_then_rerun_completes(s3_env, s3_restartable, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "1")
    big = tmp_path / "model.keras"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    store = open_store(s3_env)
    store.exists("warm-up")  # bucket checked while the server is up
    sent = [0]
    lock = threading.Lock()

    def stop_after_first_part(n: int) -> None:
        with lock:
            sent[0] += n
            if sent[0] >= 8 * 1024 * 1024 and s3_restartable.running:
                s3_restartable.stop()

    store.transfer_callback = stop_after_first_part
    with pytest.raises(StorageError) as info:
        store.upload_file(big, "runs/v1/model.keras")
    msg = one_line(info.value)
    assert "S3 endpoint" in msg and s3_restartable.endpoint in msg
    assert 0 < sent[0] < big.stat().st_size
    s3_restartable.start()
    store.transfer_callback = None
    assert not store.exists("runs/v1/model.keras")  # nothing half-written is visible
    store.upload_file(big, "runs/v1/model.keras")  # the rerun finishes the job
    out = store.download_file("runs/v1/model.keras", tmp_path / "back.keras")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_outage_mid_publish_leaves_no_visible_version_and_rerun_publishes(s3_env, s3_restartable, monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "1")
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    for name in ("metadata.json", "metrics.json", "run.json"):
        (run / name).write_text(json.dumps({"name": name}))
    (run / "model.keras").write_bytes(os.urandom(300_000))
    (run / "plots" / "roc.png").write_bytes(b"png" * 100)
    store = open_store(s3_env)
    store.exists("warm-up")
    uploads = []
    real_upload = store.upload_file

    def upload_then_fail(local_path: Path, key: str) -> None:
        real_upload(local_path, key)
        uploads.append(key)
        if len(uploads) == 2:
            s3_restartable.stop()  # the outage hits between two objects of the version

    monkeypatch.setattr(store, "upload_file", upload_then_fail)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        publish_run(store, "v1", run)
    s3_restartable.start()
    monkeypatch.setattr(store, "upload_file", real_upload)
    assert len(uploads) == 2 and store.exists(uploads[0])  # some objects did land...
    assert not store.exists(run_key("v1", COMPLETE))  # ...but the version is not published
    assert list_versions(store) == [] and not is_complete(store, "v1")
    with pytest.raises(Exception, match="not completely published"):
        set_champion(store, "v1", reason="must refuse")
    assert champion_version(store) is None
    publish_run(store, "v1", run)  # rerun: same keys, then _COMPLETE last
    assert list_versions(store) == ["v1"] and is_complete(store, "v1")
    set_champion(store, "v1", reason="after rerun")
    assert champion_version(store) == "v1"


def test_bad_urls_are_refused_with_a_clear_message():
    with pytest.raises(StorageError, match="names no bucket"):
        S3Store("s3:///prefix")
    with pytest.raises(StorageError, match="not an S3 URL"):
        S3Store("http://bucket/prefix")
