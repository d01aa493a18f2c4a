"""One storage contract, run against both backends: a local folder and S3 (a real SeaweedFS server).

Flows, tasks and the viewer only use this interface, so every behaviour they rely on is pinned here for
both backends alike: round trips, atomic overwrite, key-ordered paginated listing, folders, stat, delete,
missing objects, refused keys, large (multipart) transfers and compare-and-swap under races.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dfd.registry import (
    COMPLETE,
    champion_version,
    is_complete,
    list_versions,
    publish_run,
    read_champion,
    run_key,
    set_champion,
)
from dfd.storage import Conflict, LocalStore, NotAFile, NotFound, StorageError, TooLarge, escape_name, open_store


def test_the_backends_import_without_a_cycle_and_boto3_only_for_s3():
    """Each backend imports on its own (the factory lives in the package, not beside the contract), and
    ``dfd.storage`` alone does not load boto3."""
    checks = (
        "import sys, dfd.storage; assert 'boto3' not in sys.modules; dfd.storage.open_store('x')",
        "import dfd.storage.s3, dfd.storage; assert dfd.storage.S3Store is dfd.storage.s3.S3Store",
        "import dfd.storage.local, dfd.storage.base; assert dfd.storage.local.LocalStore.child",
    )
    for code in checks:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    """A fresh, empty store of each kind (S3: a unique prefix in the session's bucket)."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    url = request.getfixturevalue("s3_env")
    s = open_store(url)
    assert type(s).__name__ == "S3Store" and s.endpoint_url == os.environ["S3_ENDPOINT_URL"]
    return s


def test_round_trip_bytes_text_json(store):
    store.write_bytes("a/b/c.bin", b"\x00\x01binary")
    store.write_text("t.txt", "héllo")
    store.write_json("d/x.json", {"k": [1, 2]})
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01binary"
    assert store.read_text("t.txt") == "héllo"
    assert store.read_json("d/x.json") == {"k": [1, 2]}
    assert store.read_bytes("/a//b/./c.bin") == b"\x00\x01binary"  # keys are normalised
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b"" and store.stat("empty").size == 0


def test_overwrite_replaces_whole_object_and_readers_never_see_a_mix(store):
    old, new = b"A" * 300_000, b"B" * 200_000
    store.write_bytes("obj", old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            data = store.read_bytes("obj")
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    t = threading.Thread(target=reader)
    t.start()
    for i in range(6):
        store.write_bytes("obj", new if i % 2 == 0 else old)
    stop.set()
    t.join()
    assert seen <= {b"AA300000", b"BB200000"}  # whole old or whole new, never a mixture
    store.write_bytes("obj", new)
    assert store.read_bytes("obj") == new and store.stat("obj").size == len(new)


def test_list_is_recursive_in_key_order_and_relative_to_the_store(store):
    keys = ["b/c.txt", "a.txt", "a-b.txt", "a/x.txt", "ab.txt", "a/y/z.txt", "b/a.txt"]
    for k in keys:
        store.write_bytes(k, k.encode())
    listed = [o.key for o in store.list()]
    assert listed == sorted(keys)  # byte order: "a-b.txt" < "a.txt" < "a/x.txt" < "a/y/z.txt" < "ab.txt"
    assert [o.key for o in store.list("a")] == ["a/x.txt", "a/y/z.txt"]  # a folder, not a string prefix
    assert [o.key for o in store.list("a/")] == ["a/x.txt", "a/y/z.txt"]
    assert [o.key for o in store.list("a.txt")] == ["a.txt"]  # an object lists as itself
    assert list(store.list("nothing/here")) == []
    sizes = {o.key: o.size for o in store.list()}
    assert all(sizes[k] == len(k) for k in keys)
    assert all(o.mtime > 0 for o in store.list("b"))


def test_list_dirs_gives_immediate_sub_folders_only(store):
    for k in ["runs/v2/model.keras", "runs/v1/a.json", "runs/v1/deep/b.json", "runs/file.txt", "scores/x/s.json"]:
        store.write_bytes(k, b"1")
    assert store.list_dirs("runs") == ["v1", "v2"]
    assert store.list_dirs() == ["runs", "scores"]
    assert store.list_dirs("runs/v1") == ["deep"]
    assert store.list_dirs("missing") == []


def test_exists_stat_delete_and_not_found(store):
    assert not store.exists("k")
    with pytest.raises(NotFound, match="not found: .*k"):
        store.read_bytes("k")
    with pytest.raises(NotFound):
        store.stat("k")
    store.write_bytes("k", b"12345")
    assert store.exists("k")
    info = store.stat("k")
    assert (info.key, info.size) == ("k", 5)
    store.delete("k")
    assert not store.exists("k")
    store.delete("k")  # deleting a missing object is not an error
    with pytest.raises(NotFound):
        store.read_bytes("k")
    assert isinstance(NotFound("x"), StorageError)


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "..\\../b/../../c", "nul\x00"])
def test_keys_that_could_leave_the_store_are_refused(store, key):
    with pytest.raises(StorageError):
        store.write_bytes(key, b"x")
    with pytest.raises(StorageError):
        store.read_bytes(key)
    assert not store.exists(key)


def test_backslashes_are_ordinary_characters_in_keys(store):
    """A backslash is legal in a POSIX name and an S3 key: it round-trips and never escapes the store.
    Only a backslash that would read as an escape of a byte that is not UTF-8 is doubled in the key (see
    :func:`dfd.storage.escape_name`)."""
    for k in ["back\\slash.jpg", "dir\\name/in.png"]:
        store.write_bytes(k, k.encode())
        assert store.read_bytes(k) == k.encode() and store.exists(k) and store.stat(k).size == len(k.encode())
    if not isinstance(store, LocalStore):
        # AWS keeps a backslash in a key; SeaweedFS stores it as '/', so its listing says which it did.
        assert [o.key for o in store.list()] in (["back\\slash.jpg", "dir\\name/in.png"],
                                                 ["back/slash.jpg", "dir/name/in.png"])
        for bad in ["..\\x", "a\\..\\..\\b"]:  # '..' between backslashes: refused before any request
            with pytest.raises(StorageError, match="'..' is not allowed"):
                store.write_bytes(bad, b"x")
        with pytest.raises(StorageError, match="UTF-8"):  # names a byte that is not UTF-8: cannot exist in S3
            store.write_bytes("bad\\xff.jpg", b"x")
        assert not store.exists("bad\\xff.jpg")
        return
    names = ["back\\slash.jpg", "dir\\name/in.png", "..\\x", "two\\\\back.jpg", "literal\\xff.jpg",
             os.fsdecode(b"bad\xff.jpg")]
    keys = [escape_name(n) for n in names]
    assert keys[:3] == names[:3] and keys[3:] == ["two\\\\\\back.jpg", "literal\\\\xff.jpg", "bad\\xff.jpg"]
    for k in keys[2:]:
        store.write_bytes(k, k.encode())
    assert [o.key for o in store.list()] == sorted(keys)  # '..\\x' is one name inside the store
    assert sorted(p.name for p in store.root.iterdir()) == sorted(n.split("/")[0] for n in names)  # real names
    for k in keys:
        assert store.read_bytes(k) == k.encode()
    assert store.child("dir\\name").read_bytes("in.png") == b"dir\\name/in.png"


def test_delete_prefix_removes_a_folder_and_nothing_else(store):
    for key in ("runs/v1/a.bin", "runs/v1/sub/b.bin", "runs/v10/c.bin", "runs/v2/d.bin"):
        store.write_bytes(key, b"x")
    assert store.delete_prefix("runs/v1") == 2
    assert [o.key for o in store.list("runs")] == ["runs/v10/c.bin", "runs/v2/d.bin"]
    # SeaweedFS keeps listing an emptied folder (AWS does not): callers must not take a folder for content.
    assert set(store.list_dirs("runs")) - {"v1"} == {"v10", "v2"}
    assert not list(store.list("runs/v1")) and store.delete_prefix("runs/v1") == 0
    assert store.delete_prefix("runs/none") == 0


def test_child_store_is_rooted_at_a_prefix(store):
    store.write_bytes("inbox/b1/img.png", b"png")
    child = store.child("inbox")
    assert type(child) is type(store)
    assert child.read_bytes("b1/img.png") == b"png"
    assert [o.key for o in child.list()] == ["b1/img.png"]
    assert child.describe("b1/img.png") == store.describe("inbox/b1/img.png")
    assert getattr(child, "endpoint_url", None) == getattr(store, "endpoint_url", None)


def test_folder_problem_says_what_each_backend_can_know(store):
    """A folder on disk exists apart from its files; an S3 folder is a key prefix, known only by a listing."""
    store.write_bytes("in/a.png", b"1")
    store.write_bytes("file", b"1")
    assert store.folder_problem("in") is None and store.child("in").folder_problem() is None
    if isinstance(store, LocalStore):
        assert store.folder_problem("missing") == "does not exist"
        assert store.folder_problem("file") == "is not a folder"
        assert store.folder_problem("in", found_nothing=True) is None
    else:
        assert store.folder_problem("missing") is None
        assert store.folder_problem("missing", found_nothing=True) == "does not exist or is empty"


def test_local_folder_is_the_store_itself_or_a_reused_download(store, tmp_path):
    store.write_bytes("runs/v1/model.keras", b"model")
    store.write_bytes("runs/v1/metadata.json", b"{}")
    cache = tmp_path / "cache" / "v1"
    folder = store.local_folder("runs/v1", ("model.keras", "metadata.json"), cache)
    assert (folder / "model.keras").read_bytes() == b"model" and (folder / "metadata.json").read_bytes() == b"{}"
    if isinstance(store, LocalStore):
        assert folder == store.root / "runs" / "v1" and not cache.exists()  # read in place, nothing copied
        return
    assert folder == cache
    store.write_bytes("runs/v1/model.keras", b"changed")  # a published run never changes: the copy is reused
    assert (store.local_folder("runs/v1", ("model.keras", "metadata.json"), cache) / "model.keras").read_bytes() \
        == b"model"


def test_read_limited_refuses_objects_over_the_limit(store):
    store.write_bytes("in/x.png", b"x" * 100)
    assert store.read_limited("in/x.png", 100) == b"x" * 100
    with pytest.raises(TooLarge, match="over the limit of 99"):
        store.read_limited("in/x.png", 99)
    with pytest.raises((NotFound, FileNotFoundError)):
        store.read_limited("in/missing.png", 100)


def test_read_limited_refuses_what_is_not_a_regular_file(tmp_path):
    store = LocalStore(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")  # reading a FIFO would block until a writer came
    with pytest.raises(NotAFile):
        store.read_limited("pipe.jpg", 1 << 20)


def test_open_local_only_for_the_local_backend(store):
    store.write_bytes("a/b/x", b"123")
    fd = store.open_local("a/b/x")
    if not isinstance(store, LocalStore):
        assert fd is None
        return
    with open(fd, "rb") as f:
        assert f.read() == b"123"


def test_open_local_follows_links_only_inside_the_store(tmp_path):
    """Links inside the store are followed; links that leave it, loops and folder links that leave it are
    refused, whether or not the folder was checked before."""
    root = tmp_path / "store"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.jpg").write_bytes(b"inside")
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "y.jpg").write_bytes(b"outside too")
    os.symlink("sub/x.jpg", root / "link-in.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "sub" / "link-out.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink(tmp_path / "elsewhere", root / "linked-folder")
    store = LocalStore(root)

    def read(key):
        with open(store.open_local(key), "rb") as f:
            return f.read()

    assert read("sub/x.jpg") == b"inside" and read("link-in.jpg") == b"inside"
    with pytest.raises(StorageError, match="leaves the store"):
        store.open_local("sub/link-out.jpg")
    with pytest.raises(StorageError, match="(?i)loop"):
        store.open_local("loop.jpg")
    with pytest.raises(StorageError, match="leaves the store"):
        store.open_local("linked-folder/y.jpg")
    with pytest.raises(FileNotFoundError):
        store.open_local("sub/missing.jpg")
    with pytest.raises(StorageError, match="'..' is not allowed"):
        store.open_local("sub/../../secret.jpg")


def test_upload_and_download_a_20_mb_file_in_parts(store, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 123))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    store.upload_file(src, "runs/v1/model.keras")
    assert store.stat("runs/v1/model.keras").size == src.stat().st_size
    out = store.download_file("runs/v1/model.keras", tmp_path / "dl" / "model.keras")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert [p.name for p in out.parent.iterdir()] == ["model.keras"]  # no temporary left behind
    for name, data in (("small.json", b'{"a": 1}'), ("empty", b"")):  # small files take a single PUT/GET
        (tmp_path / name).write_bytes(data)
        store.upload_file(tmp_path / name, f"runs/v1/{name}")
        assert store.read_bytes(f"runs/v1/{name}") == data
        assert store.download_file(f"runs/v1/{name}", tmp_path / "dl2" / name).read_bytes() == data
    with pytest.raises(NotFound):
        store.download_file("runs/v1/missing", tmp_path / "dl" / "missing")
    assert not (tmp_path / "dl" / "missing").exists()


def test_read_versioned_and_write_if_unchanged(store):
    assert store.read_versioned("ptr.json") == (None, None)
    store.write_if_unchanged("ptr.json", b"one", None)  # create only if absent
    with pytest.raises(Conflict):
        store.write_if_unchanged("ptr.json", b"again", None)
    data, token = store.read_versioned("ptr.json")
    assert data == b"one" and token
    store.write_if_unchanged("ptr.json", b"two", token)
    with pytest.raises(Conflict):
        store.write_if_unchanged("ptr.json", b"three", token)  # stale token
    assert store.read_bytes("ptr.json") == b"two"


def test_two_writers_with_the_same_token_exactly_one_wins(store):
    store.write_bytes("ptr.json", b"base")
    _, token = store.read_versioned("ptr.json")
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def writer(name: str) -> None:
        barrier.wait()
        try:
            store.write_if_unchanged("ptr.json", name.encode(), token)
            outcome[name] = "won"
        except Conflict:
            outcome[name] = "lost"

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("w1", "w2")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcome.values()) == ["lost", "won"]
    winner = next(n for n, o in outcome.items() if o == "won")
    assert store.read_bytes("ptr.json") == winner.encode()


def test_read_modify_write_from_many_threads_loses_no_update(store):
    store.write_json("counter.json", [])
    per_thread, threads = 6, 4

    def add(name: str) -> None:
        for i in range(per_thread):
            while True:
                data, token = store.read_versioned("counter.json")
                items = json.loads(data)
                try:
                    store.write_if_unchanged("counter.json", json.dumps(items + [f"{name}-{i}"]).encode(), token)
                    break
                except Conflict:
                    continue

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(add, [f"t{n}" for n in range(threads)]))
    assert sorted(store.read_json("counter.json")) == sorted(f"t{n}-{i}" for n in range(threads)
                                                             for i in range(per_thread))


def _publish_fake_run(store, version: str, tmp_path: Path) -> None:
    folder = tmp_path / version
    (folder / "plots").mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"version": version}))
    (folder / "model.keras").write_bytes(os.urandom(5000))
    (folder / "plots" / "roc.png").write_bytes(b"png")
    publish_run(store, version, folder)


def test_publish_run_writes_complete_last_and_set_champion_refuses_incomplete(store, tmp_path):
    _publish_fake_run(store, "v1", tmp_path)
    assert is_complete(store, "v1") and list_versions(store) == ["v1"]
    complete = store.read_json(run_key("v1", COMPLETE))
    assert sorted(complete["files"]) == ["metadata.json", "model.keras", "plots/roc.png"]
    # A version whose upload stopped half-way (no _COMPLETE) is invisible and cannot become champion.
    store.write_bytes(run_key("v2", "model.keras"), b"partial")
    assert list_versions(store) == ["v1"]
    with pytest.raises(Exception, match="not completely published"):
        set_champion(store, "v2", reason="test")
    # A listed file that went missing makes the version incomplete again.
    store.delete(run_key("v1", "plots/roc.png"))
    assert not is_complete(store, "v1")


def test_set_champion_racing_from_two_threads(store, tmp_path):
    for v in ("v1", "v2", "v3"):
        _publish_fake_run(store, v, tmp_path)
    set_champion(store, "v1", reason="first")
    # Both decided against champion v1: exactly one promotion may succeed, the other must re-decide.
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def promote(version: str) -> None:
        barrier.wait()
        try:
            set_champion(store, version, reason="race", expected="v1")
            results[version] = "won"
        except Conflict:
            results[version] = "conflict"

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("v2", "v3")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results.values()) == ["conflict", "won"]
    winner = next(v for v, r in results.items() if r == "won")
    assert champion_version(store) == winner
    # Unconditional promotions from two threads both land, one after the other: the history keeps both.
    barrier2 = threading.Barrier(2)

    def promote_any(version: str) -> None:
        barrier2.wait()
        set_champion(store, version, reason="unconditional")

    threads = [threading.Thread(target=promote_any, args=(v,)) for v in ("v2", "v3")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    pointer = read_champion(store)
    trail = [h["version"] for h in pointer["history"]] + [pointer["version"]]
    assert trail[:2] == ["v1", winner]
    assert sorted(trail[2:]) == ["v2", "v3"]  # neither update was lost


@pytest.mark.s3
def test_s3_listing_paginates_over_more_than_1000_keys(s3_env):
    from dfd.storage.s3 import S3Store

    store = S3Store(s3_env, endpoint_url=os.environ["S3_ENDPOINT_URL"])
    keys = [f"inbox/{i:05d}.png" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.write_bytes(k, b"x"), keys))
    assert [o.key for o in store.list("inbox")] == keys  # two pages of the server's 1000-key maximum
    small_pages = S3Store(s3_env, endpoint_url=os.environ["S3_ENDPOINT_URL"], page_size=7)
    assert [o.key for o in small_pages.list("inbox")] == keys
    for i in range(9):
        store.write_bytes(f"batches/b{i}/_READY", b"")
    assert small_pages.list_dirs("batches") == [f"b{i}" for i in range(9)]
