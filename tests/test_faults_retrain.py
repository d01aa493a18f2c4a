"""Fault injection on retraining and promotion: ``kill -9`` of ``python -m flows.retrain`` at five points of the
DAG and at each step of promotion, each followed by a checked rerun.

Same harness as :mod:`test_faults`: the child process patches one function so that it tells the test through a
pipe and waits at an exact point; the test SIGKILLs the whole process group and checks that no process of it
is left. The child uses the session's Prefect API (no temporary server of its own). After the kill the
champion pointer must name a complete, loadable run; after the rerun (the flow itself, in this process, with
the same settings and work folder) there is exactly one new version with a decision of the rerun, every
version the killed run published is accounted for, and once the registry's reconcile has run (as the next
retrain does, three hours on) every published version carries exactly one decision, and the pointer agrees
with the decisions.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import make_dataset, publish_tiny_model
from test_faults import env_for, kill_at

from dfd import registry
from dfd.layout import COMPLETE, RUN_RECORD, RUNS, run_key
from dfd.storage import open_store

BASE_CHAMPION = "20260101-000000-tiny00"
# Old leftovers the "reconcile" case finds (names sort before every real version: the incomplete one first).
OLD_INCOMPLETE, OLD_PENDING = "19990101-000000-aaaaaa", "19990101-000000-bbbbbb"

# Runs in the child: patch the kill point, then run the command (dfd.cli.retrain, what python -m flows.retrain
# runs). ``pause`` tells the pipe once and then blocks every thread that reaches a kill point.
CHILD = r"""
import os, signal, sys, threading
sys.path.insert(0, os.environ["DFD_ROOT"])
point = os.environ["DFD_KILL_POINT"]
pipe = int(os.environ["DFD_PAUSE_FD"])
lock = threading.Lock()

def pause(what):
    if lock.acquire(blocking=False):
        os.write(pipe, f"paused at {what}\n".encode())
    while True:
        signal.pause()  # until the parent's SIGKILL

from dfd import evaluate, record, train
from dfd.storage.local import LocalStore

if point == "validated":  # validate-data finished (the run folder and its manifest written), nothing else yet
    def last_successful_run(store):
        pause("check-changes, after validate-data")
    record.last_successful_run = last_successful_run
elif point == "augment":  # the 3rd augmented copy written to the synthetic folder
    write, written = LocalStore.write_bytes, []
    synthetic = os.path.realpath(os.environ["SYNTHETIC_URL"])
    def write_bytes(self, key, data):
        write(self, key, data)
        if os.path.realpath(self.root) == synthetic:
            written.append(key)
            if len(written) == 3:
                pause(f"augment, {key} written")
    LocalStore.write_bytes = write_bytes
elif point == "epoch":  # training: the first epoch's checkpoint written
    on_epoch_end = train._Backup.on_epoch_end
    def patched(self, epoch, logs=None):
        on_epoch_end(self, epoch, logs)
        pause(f"epoch {epoch + 1} checkpointed in {self.backup_dir}")
    train._Backup.on_epoch_end = patched
elif point == "evaluate":  # validation scored, the test split not yet
    score, calls = evaluate.score_entries, []
    def score_entries(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            pause("evaluate, before scoring the test split")
        return score(*args, **kwargs)
    evaluate.score_entries = score_entries
elif point == "publish":  # the model uploaded, _COMPLETE not yet written
    upload = LocalStore.upload_file
    def upload_file(self, local_path, key):
        upload(self, local_path, key)
        if key.startswith("runs/") and key.endswith("/model.keras"):
            pause(f"publish, {key} uploaded")
    LocalStore.upload_file = upload_file
elif point in ("before-cas", "after-cas"):  # the champion pointer's compare-and-swap write
    swap = LocalStore.write_if_unchanged
    def write_if_unchanged(self, key, data, token):
        if key == "champion.json" and point == "before-cas":
            pause("promote, before the champion pointer's conditional write")
        swap(self, key, data, token)
        if key == "champion.json":
            pause("promote, champion pointer written, run.json not yet")
    LocalStore.write_if_unchanged = write_if_unchanged
elif point == "reconcile":  # reconcile removed an old incomplete run, the old pending one not recorded yet
    delete_prefix = LocalStore.delete_prefix
    def patched_delete_prefix(self, prefix):
        count = delete_prefix(self, prefix)
        pause(f"reconcile, {prefix} removed")
        return count
    LocalStore.delete_prefix = patched_delete_prefix
else:
    raise SystemExit(f"unknown kill point {point!r}")

from dfd.cli import retrain
sys.exit(retrain(sys.argv[1:]))
"""

POINTS = ["validated", "augment", "epoch", "evaluate", "publish", "before-cas", "after-cas", "reconcile"]
# The rerun of these trains a model while the killed run's published version waits for reconcile.
PUBLISHED_BY_KILLED_RUN = {"before-cas": "abandoned", "after-cas": "promoted"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """One tiny data set and an artifact store holding a tiny champion, copied by every case."""
    root = tmp_path_factory.mktemp("retrain-faults")
    artifacts = root / "artifacts"
    publish_tiny_model(artifacts, version=BASE_CHAMPION)
    return {"data": make_dataset(root / "data", per_class=20, size=32), "artifacts": artifacts}


def settings_env(base: dict[str, Path], case: Path) -> dict[str, str]:
    """Tiny and quick: 2 epochs of a narrow patchnet, one augmented copy per image, no floor, and a
    tolerance that makes every candidate that clears the floor win (so promotion always reaches the pointer)."""
    return {"DATA_URL": str(base["data"]), "ARTIFACTS_URL": str(case / "artifacts"),
            "SYNTHETIC_URL": str(case / "synthetic"), "DFD_WORK_DIR": str(case / "work"), "DFD_EPOCHS": "2",
            "DFD_BATCH_SIZE": "8", "DFD_WIDTH": "8", "DFD_EVAL_CROPS": "1", "DFD_AUGMENT_PER_IMAGE": "1",
            "DFD_SCALE_AUG": "0", "DFD_STALL_EPOCHS": "0", "DFD_MIN_IMAGES_PER_CLASS": "5", "DFD_MIN_AUC": "0",
            "DFD_PROMOTION_TOLERANCE": "1"}


def seed_old_leftovers(store_root: Path) -> None:
    """What runs killed hours ago left: an upload cut short (no _COMPLETE, a torn temporary file) and a
    published run that never recorded its decision."""
    store = open_store(store_root)
    store.write_bytes(run_key(OLD_INCOMPLETE, "model.keras"), b"half a model")
    (store_root / RUNS / OLD_INCOMPLETE / ".tmp-torn").write_bytes(b"torn")
    store.write_bytes(run_key(OLD_PENDING, "notes.txt"), b"published, never decided")
    store.write_json(run_key(OLD_PENDING, COMPLETE), {"version": OLD_PENDING, "files": {"notes.txt": {"bytes": 24}},
                                                     "completed_at": "1999-01-01T00:00:00+00:00"})
    hours_ago = time.time() - 5 * 3600
    for path in (store_root / RUNS).rglob("*"):
        if OLD_INCOMPLETE in str(path) or OLD_PENDING in str(path):
            os.utime(path, (hours_ago, hours_ago))


def check_champion(store_root: Path, cache: Path) -> str:
    """The pointer names a complete run that the project's own loader loads; every listed version is whole."""
    from dfd.predict import Predictor

    store = open_store(store_root)
    for version in registry.list_versions(store):
        assert registry.is_complete(store, version), f"version {version} is listed but not whole"
    champion = registry.champion_version(store)
    assert champion and registry.is_complete(store, champion), f"champion.json names {champion!r}"
    predictor = Predictor.from_folder(registry.fetch_model_dir(store, champion, cache))
    assert 0.0 < float(predictor.threshold) < 1.0
    return champion


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_of_retrain_then_rerun(point: str, prefect_api, base, tmp_path, monkeypatch):
    from flows.retrain import retrain

    shutil.copytree(base["artifacts"], tmp_path / "artifacts")
    if point == "reconcile":
        seed_old_leftovers(tmp_path / "artifacts")
    env = settings_env(base, tmp_path)
    store = open_store(tmp_path / "artifacts")
    before = set(store.list_dirs(RUNS))

    command_env = env_for({"artifacts": tmp_path / "artifacts", "work": tmp_path / "work"}, tmp_path, **env)
    said = kill_at(CHILD, ["--data", env["DATA_URL"], "--artifacts", env["ARTIFACTS_URL"], "--no-demo"], point,
                   command_env, tmp_path / "killed.log")
    print(f"\n{point}: {said}")

    # After the kill: the pointer still names a whole, loadable run; what the killed run published is accounted for.
    killed_runs = set(store.list_dirs(RUNS)) - before
    champion_after_kill = check_champion(tmp_path / "artifacts", tmp_path / "cache")
    if point in ("validated", "augment", "epoch", "evaluate"):  # nothing published yet
        assert not killed_runs and champion_after_kill == BASE_CHAMPION
    elif point == "publish":  # a run folder without _COMPLETE: invisible
        (killed,) = killed_runs
        assert killed not in registry.list_versions(store) and champion_after_kill == BASE_CHAMPION
    elif point == "reconcile":
        assert not killed_runs and OLD_INCOMPLETE not in store.list_dirs(RUNS), "killed after removing it"
        assert registry.read_run(store, OLD_PENDING)["decision"] == "pending", "killed before it was recorded"
    else:
        (killed,) = killed_runs
        assert registry.read_run(store, killed)["decision"] == "pending", "killed before run.json"
        assert champion_after_kill == (killed if point == "after-cas" else BASE_CHAMPION)

    # The rerun: the same settings and work folder, the flow in this process.
    synthetic_before = {f: f.stat().st_mtime_ns for f in (tmp_path / "synthetic").rglob("*") if f.is_file()}
    if point in ("validated", "augment", "reconcile"):  # killed before augment, or when it had written three
        assert len(synthetic_before) == (3 if point == "augment" else 0), sorted(synthetic_before)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = retrain()
    assert result["decision"] == "promoted", result  # the tolerance makes every candidate win
    new_version = result["version"]
    assert new_version not in killed_runs
    assert registry.read_run(store, new_version)["decision"] == "promoted"
    assert check_champion(tmp_path / "artifacts", tmp_path / "cache") == new_version
    for f, mtime in synthetic_before.items():  # what the killed run's augment wrote is reused, not redone
        assert f.stat().st_mtime_ns == mtime, f"{f} was written again"
    new_published = set(registry.list_versions(store)) - before
    expected = {new_version} | ({killed} if point in PUBLISHED_BY_KILLED_RUN else set())
    assert new_published == expected, "exactly one new version, plus the one the killed run had published"
    if point == "reconcile":  # the rerun's reconcile finished what the killed one started
        assert not (tmp_path / "artifacts" / RUNS / OLD_INCOMPLETE).exists()
        assert registry.read_run(store, OLD_PENDING)["decision"] == "abandoned"

    # The next retrain's reconcile, hours later: every published version has exactly one decision, and the
    # pointer (current and history) names exactly the versions recorded as promoted.
    registry.reconcile(store, now=time.time() + 4 * 3600)
    if point in PUBLISHED_BY_KILLED_RUN:
        assert registry.read_run(store, killed)["decision"] == PUBLISHED_BY_KILLED_RUN[point]
    if point == "publish":  # the killed upload, invisible all along, is removed
        assert killed not in store.list_dirs(RUNS)
    pointer = registry.read_champion(store)
    named = {pointer["version"]} | {h["version"] for h in pointer["history"]}
    for version in registry.list_versions(store):
        decision = store.read_json(run_key(version, RUN_RECORD))["decision"]
        assert decision in ("promoted", "rejected", "abandoned"), (version, decision)
        assert (decision == "promoted") == (version in named), (version, decision, named)
    leftovers = list((tmp_path / "artifacts").rglob(".tmp-*"))
    assert not leftovers, f"temporary files of killed writes are left: {leftovers}"
