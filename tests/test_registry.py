"""Registry: complete versions only, atomic pointer, conflicts detected, rollback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dfd import registry
from dfd.storage import Conflict, open_store


def _publish(store, tmp_path: Path, version: str) -> None:
    d = tmp_path / version
    d.mkdir()
    (d / "model.keras").write_bytes(b"m" * 100)
    (d / "metadata.json").write_text("{}")
    registry.publish_run(store, version, d)


def test_pointer_only_names_complete_versions(tmp_path: Path):
    store = open_store(tmp_path / "a")
    _publish(store, tmp_path, "v1")
    assert registry.list_versions(store) == ["v1"]
    store.write_bytes("runs/v2/model.keras", b"half")  # a version whose publication never finished
    assert registry.list_versions(store) == ["v1"]
    with pytest.raises(registry.RegistryError, match="not completely published"):
        registry.set_champion(store, "v2", "test")
    registry.set_champion(store, "v1", "first")
    store.write_bytes("runs/v1/model.keras", b"x")  # damaged after publication: size no longer matches
    assert not registry.is_complete(store, "v1")
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.resolve_version(open_store(tmp_path / "empty"), None)


def test_promotion_conflict_and_rollback(tmp_path: Path):
    store = open_store(tmp_path / "a")
    for v in ("v1", "v2", "v3"):
        _publish(store, tmp_path, v)
    registry.set_champion(store, "v1", "first", expected=None)
    with pytest.raises(Conflict):
        registry.set_champion(store, "v2", "decided against no champion", expected=None)
    registry.set_champion(store, "v2", "better", expected="v1")
    assert registry.champion_version(store) == "v2"
    assert registry.rollback(store)["version"] == "v1"
    assert registry.rollback(store, to="v3")["version"] == "v3"
    with pytest.raises(registry.RegistryError, match="unknown version"):
        registry.rollback(store, to="v9")
    assert registry.main(["--artifacts", str(tmp_path / "a"), "rollback", "--to", "v2"]) == 0
    assert registry.champion_version(store) == "v2"


def test_racing_promotions_lose_no_update(tmp_path: Path):
    store = open_store(tmp_path / "a")
    versions = [f"v{i}" for i in range(8)]
    for v in versions:
        _publish(store, tmp_path, v)
    threads = [threading.Thread(target=registry.set_champion, args=(store, v, "race")) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pointer = registry.read_champion(store)
    seen = [h["version"] for h in pointer["history"]] + [pointer["version"]]
    assert sorted(seen) == versions  # every promotion is recorded exactly once


def test_reconcile_tidies_what_interrupted_runs_left(tmp_path: Path):
    """A kill mid-upload leaves a folder without _COMPLETE (and a temporary file); a kill between publishing
    and recording leaves a run without run.json, champion or not. Old leftovers are tidied, fresh ones (a run
    publishing right now) are left alone."""
    import time

    store = open_store(tmp_path / "a")
    for v in ("v1", "v2", "v3"):
        _publish(store, tmp_path, v)
    store.write_json("runs/v3/run.json", {"decision": "rejected", "reason": "worse"})
    registry.set_champion(store, "v1", "first")
    store.write_bytes("runs/v4/model.keras", b"half")  # never completed
    (tmp_path / "a" / "runs" / "v4" / ".tmp-abc123").write_bytes(b"torn")
    assert registry.read_run(store, "v2")["decision"] == "pending"

    assert registry.reconcile(store) == []  # everything is fresh: it may belong to a run in progress
    later = time.time() + 4 * 3600
    actions = registry.reconcile(store, now=later)
    assert sorted(actions) == sorted([
        "recorded run v1 as promoted", "recorded run v2 as abandoned",
        "removed the incomplete run v4 (1 files; never published)"])
    assert registry.read_run(store, "v1")["decision"] == "promoted"
    v2 = registry.read_run(store, "v2")
    assert v2["decision"] == "abandoned" and "never champion" in v2["reason"]
    assert registry.read_run(store, "v3")["decision"] == "rejected"  # untouched
    assert not (tmp_path / "a" / "runs" / "v4").exists()
    assert registry.list_versions(store) == ["v3", "v2", "v1"] and registry.champion_version(store) == "v1"
    assert registry.reconcile(store, now=later) == []  # idempotent
