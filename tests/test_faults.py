"""Fault injection on batch scoring: ``kill -9`` of the command at four points, each followed by a checked rerun,
and a full disk under the artifact store (a real tmpfs when it can be mounted, and a store that runs out of
space at each write).

The command is killed at exact points, not after a guessed delay: the child process installs a hook (below)
that, at the chosen point, tells the test through a pipe and then waits; the test waits for that message
(with a generous bound) and sends SIGKILL to the whole process group. Every wait is bounded and says what it
waited for.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import png_bytes, publish_tiny_model

from dfd import csvsafe
from dfd.demo import synthetic_photo
from dfd.scoring import ScoringError, batch_id_for, load_predictor, results_prefix, score_folder
from dfd.storage import LocalStore, open_store

ROOT = Path(__file__).resolve().parents[1]
FILES = 36
PAUSE_SECONDS = 240  # the longest wait for the child to reach its kill point (a cold start is ~20 s)
KILL_REAP_SECONDS = 300

# Runs in the child before the command's main(): pauses the command at DFD_KILL_POINT ("what[:n]") after
# writing one line to the pipe DFD_PAUSE_FD, so that the parent can kill it exactly there.
CHILD = r"""
import os, signal, sys, tempfile
sys.path.insert(0, os.environ["DFD_ROOT"])
from dfd import scoring
from dfd.storage import local as storage  # LocalStore and the atomic write it calls

point, _, arg = os.environ["DFD_KILL_POINT"].partition(":")
pipe = int(os.environ["DFD_PAUSE_FD"])

def pause(what):
    os.write(pipe, f"paused at {what}\n".encode())
    while True:
        signal.pause()  # until the parent's SIGKILL

if point == "ledger-chunk":  # after the n-th ledger chunk is on disk: mid-inference
    append = scoring.Ledger.append
    def patched_append(self, records):
        append(self, records)
        if self._seq >= int(arg):
            pause(f"ledger chunk {self._seq}")
    scoring.Ledger.append = patched_append
elif point == "torn-chunk":  # half-way through writing the n-th chunk's temporary file
    write = storage.atomic_write_local
    def patched_write(path, data):
        if path.parent.name == "ledger" and path.name.endswith(f"-{int(arg):06d}.jsonl"):
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            pause(f"half of {path.name} written to {os.path.basename(tmp)}")
        write(path, data)
    storage.atomic_write_local = patched_write
elif point == "results-csv":  # results.csv published, results.jsonl and summary.json not yet
    upload = storage.LocalStore.upload_file
    def patched_upload(self, local_path, key):
        upload(self, local_path, key)
        if key.endswith("/results.csv"):
            pause(key)
    storage.LocalStore.upload_file = patched_upload
elif point == "compact":  # ledger.jsonl merged, its chunks not yet deleted, summary.json not written
    delete = storage.LocalStore.delete
    def patched_delete(self, key):
        if "/ledger/" in key:
            pause(f"deleting {key}")
        delete(self, key)
    storage.LocalStore.delete = patched_delete
else:
    raise SystemExit(f"unknown kill point {point!r}")

from flows.score_batch import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    artifacts = root / "artifacts"
    publish_tiny_model(artifacts)
    predictor, version = load_predictor(open_store(artifacts), None, root / "work")
    return {"artifacts": artifacts, "predictor": predictor, "version": version, "work": root / "work"}


def make_folder(folder: Path, n: int = FILES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"img_{i:03d}.png").write_bytes(png_bytes(synthetic_photo(rng, 32)))
    return folder


def env_for(champion: dict[str, Any], tmp: Path, **extra: str) -> dict[str, str]:
    """The command's environment: the session's Prefect API (no temporary server per command), its own
    PREFECT_HOME and work folder, and a ledger chunk after every batch."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), DFD_ROOT=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(tmp / "prefect-home"),
               DFD_WORK_DIR=str(champion["work"]), ARTIFACTS_URL=str(champion["artifacts"]),
               DFD_LEDGER_FLUSH_SECONDS="0")
    api = PREFECT_API_URL.value()
    if api:
        env["PREFECT_API_URL"] = api
    env.update(extra)
    return env


def run_until_killed(point: str, folder: Path, env: dict[str, str], log: Path) -> str:
    """Start ``python -m flows.score_batch FOLDER`` with the kill hook, wait until it pauses at ``point``,
    then SIGKILL its whole process group; returns what the child said."""
    return kill_at(CHILD, [str(folder), "--batch-size", "2"], point, env, log)


def kill_at(child: str, args: list[str], point: str, env: dict[str, str], log: Path) -> str:
    """Run ``python -c CHILD ARGS`` (a script that pauses at ``DFD_KILL_POINT`` after telling the pipe
    ``DFD_PAUSE_FD``) in its own process group, wait until it pauses, SIGKILL the whole group, and check that
    no process of the group is left (the command's children included); returns what the child said."""
    read_end, write_end = os.pipe()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", child, *args],
            cwd=ROOT, env={**env, "DFD_KILL_POINT": point, "DFD_PAUSE_FD": str(write_end)},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], PAUSE_SECONDS)
        said = os.read(read_end, 4096).decode() if ready else ""
        if not said:
            state = "did not reach it" if proc.poll() is None else f"exited with {proc.returncode} before it"
            pytest.fail(f"the command {state} within {PAUSE_SECONDS} s (kill point {point}); its output:\n"
                        + log.read_text(errors="replace")[-3000:])
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9, the command and anything it started
        _reap(proc)
        assert proc.returncode == -signal.SIGKILL
        wait_until_group_gone(proc.pid)
        return said.strip()
    finally:
        os.close(read_end)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _reap(proc)


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes (zombies not counted: the kernel has ended them) in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry.name))
    return pids


def wait_until_group_gone(pgid: int) -> None:
    """Wait (bounded) until no process of the killed group is alive: no orphan left behind by the kill."""
    deadline = time.monotonic() + KILL_REAP_SECONDS
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        select.select([], [], [], 0.05)  # a short poll of the process table, bounded by the deadline above
    assert not left, f"processes of the killed command's group {pgid} are still running: {left}"


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a SIGKILLed child to be gone (the kernel does it at once; the bound is for a loaded machine)."""
    try:
        proc.wait(timeout=KILL_REAP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the killed command (pid {proc.pid}) was still not gone after {KILL_REAP_SECONDS} s")


def ledger_paths(prefix: Path) -> set[str]:
    """Paths recorded in the ledger (compacted file and chunks; temporary files are not the ledger)."""
    files = [prefix / "ledger.jsonl", *sorted((prefix / "ledger").glob("*.jsonl"))]
    paths: set[str] = set()
    for f in files:
        if f.exists():
            for line in f.read_text("utf-8").splitlines():
                if line.strip():
                    paths.add(json.loads(line)["path"])
    return paths


def check_complete(summary: dict[str, Any], folder: Path, reference: dict[str, float]) -> None:
    """One row per file, in both results files, parseable, with the scores of an uninterrupted run."""
    names = sorted(p.name for p in folder.iterdir())
    assert summary["files"] == len(names) and summary["errors"] == 0 and summary["scored"] == len(names)
    rows = [json.loads(line) for line in Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()]
    assert sorted(r["path"] for r in rows) == names, "a file is missing or listed twice in results.jsonl"
    with open(summary["results"]["csv"], newline="", encoding="utf-8") as fh:
        csv_rows = [csvsafe.restore_row(r) for r in csv.DictReader(fh)]
    assert sorted(r["path"] for r in csv_rows) == names, "a file is missing or listed twice in results.csv"
    for r in rows:
        assert r["score"] == pytest.approx(reference[r["path"]], abs=1e-6), r["path"]
    prefix = Path(summary["results"]["folder"])
    assert json.loads((prefix / "summary.json").read_text())["files"] == len(names)
    assert sorted(ledger_paths(prefix)) == names
    assert not list((prefix / "ledger").glob("*.jsonl")), "the rerun left ledger chunks behind"


def check_published_consistently(prefix: Path) -> None:
    """Whenever ``summary.json`` is there (the batch is listed), the results files beside it are the ones it
    describes: as many rows as it counts, and the sha256 it records."""
    if not (prefix / "summary.json").exists():
        return
    summary = json.loads((prefix / "summary.json").read_text("utf-8"))
    for kind, name in (("csv", "results.csv"), ("jsonl", "results.jsonl")):
        data = (prefix / name).read_bytes()
        rows = len(data.splitlines()) - (kind == "csv")
        assert rows == summary["files"], (f"{name} holds {rows} rows but summary.json describes {summary['files']}"
                                          " files: the listed batch mixes two runs")
        assert hashlib.sha256(data).hexdigest() == summary["results_sha256"][kind], f"{name} is not the one described"


def reference_scores(champion: dict[str, Any], folder: Path) -> dict[str, float]:
    summary = score_folder(str(folder), str(champion["artifacts"]), champion["predictor"], champion["version"],
                           batch_id=f"reference-{folder.parent.name}", batch_size=8, progress_every=0)
    lines = Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()
    return {r["path"]: r["score"] for r in map(json.loads, lines)}


KILL_POINTS = {
    "ledger-chunk:3": "mid-inference, 3 ledger chunks written",
    "torn-chunk:4": "in the middle of writing the 4th ledger chunk",
    "results-csv": "between results.csv and results.jsonl",
    "compact": "after the ledger was merged, before its chunks were deleted and summary.json written",
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun(point: str, prefect_api, champion, tmp_path):
    folder = make_folder(tmp_path / "batch")
    prefix = champion["artifacts"] / results_prefix(batch_id_for(str(folder)))
    env = env_for(champion, tmp_path)
    said = run_until_killed(point, folder, env, tmp_path / "killed.log")
    print(f"\n{point}: {said}")

    assert not (prefix / "summary.json").exists(), "killed before the end, yet the batch looks complete"
    for name in ("results.csv", "results.jsonl"):  # what is visible is whole, never a torn file
        if (prefix / name).exists():
            lines = (prefix / name).read_text("utf-8").splitlines()
            assert len(lines) == FILES + (name == "results.csv"), f"{name} is partly written"
    done_before = ledger_paths(prefix)
    if point == "torn-chunk:4":
        assert list((prefix / "ledger").glob(".tmp-*")), "no torn temporary file: the hook did not fire"
    if point in ("results-csv", "compact"):
        assert len(done_before) == FILES
    else:
        assert 0 < len(done_before) < FILES

    reference = reference_scores(champion, folder)
    if point == "ledger-chunk:3":  # this one is rerun with the command itself
        rerun = subprocess.run([sys.executable, "-m", "flows.score_batch", str(folder), "--batch-size", "4"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=PAUSE_SECONDS)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"{FILES} files, {FILES} scored" in rerun.stdout
        summary = json.loads((prefix / "summary.json").read_text())
        summary["results"] = {"folder": str(prefix), "csv": str(prefix / "results.csv"),
                              "jsonl": str(prefix / "results.jsonl")}
    else:
        summary = score_folder(str(folder), str(champion["artifacts"]), champion["predictor"],
                               champion["version"], batch_size=4, progress_every=0, flush_seconds=0.0)
    assert summary["scored_this_run"] <= FILES - len(done_before), "work finished before the kill was redone"
    check_complete(summary, folder, reference)
    check_published_consistently(prefix)
    assert not leftovers(prefix), "the rerun left the temporary files of the killed writes"


def test_a_run_removes_only_the_temporary_files_older_than_itself(tmp_path):
    """Temporary files that killed writes left in the batch folder and its ledger folder are removed when the
    next run loads the ledger; one written after that run started (a write in progress) and the ledger's own
    chunks are kept."""
    from dfd.scoring.ledger import Ledger

    prefix = results_prefix("batch")
    chunks = tmp_path / prefix / "ledger"
    chunks.mkdir(parents=True)
    ledger = Ledger(LocalStore(tmp_path), prefix, "v1")
    before, after = ledger.started - 3600, ledger.started + 3600
    files = {chunks / ".tmp-torn-chunk": before, tmp_path / prefix / ".tmp-torn-results": before,
             chunks / ".tmp-being-written": after, chunks / "20260101T000000-abc-000001.jsonl": before}
    for path, mtime in files.items():
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    ledger.load()
    left = sorted(p.name for p in (tmp_path / prefix).rglob("*") if p.is_file())
    assert left == [".tmp-being-written", "20260101T000000-abc-000001.jsonl"]
    assert sorted(ledger.removed_temporaries) == [f"{prefix}/.tmp-torn-results", f"{prefix}/ledger/.tmp-torn-chunk"]


@pytest.mark.slow
def test_kill_9_mid_rescoring_never_shows_new_results_under_an_old_summary(prefect_api, champion, tmp_path):
    """A batch already published is scored again (files were added) and killed after its new results.csv: the
    viewer must not list the new results.csv beside the previous summary.json and results.jsonl. The
    rescoring withdraws summary.json first, so the batch is not listed until the rerun publishes it again."""
    from app.catalog import Catalog

    folder = make_folder(tmp_path / "batch", n=12, seed=3)
    args = (str(folder), str(champion["artifacts"]), champion["predictor"], champion["version"])
    first = score_folder(*args, batch_size=4, progress_every=0, flush_seconds=0.0)
    prefix, batch_id = Path(first["results"]["folder"]), first["batch_id"]
    check_published_consistently(prefix)
    rng = np.random.default_rng(4)
    for i in range(12, 18):  # new files: the next run rescores the batch
        (folder / f"img_{i:03d}.png").write_bytes(png_bytes(synthetic_photo(rng, 32)))

    def listed() -> dict[str, Any]:
        catalog = Catalog(open_store(champion["artifacts"]), 0.0)
        return {b["batch_id"]: b for b in catalog.batches()}

    assert listed()[batch_id]["files"] == 12
    said = run_until_killed("results-csv", folder, env_for(champion, tmp_path), tmp_path / "killed.log")
    assert said.endswith("results.csv")
    assert len((prefix / "results.csv").read_text("utf-8").splitlines()) == 18 + 1, "the new results.csv"
    check_published_consistently(prefix)  # failed before the fix: 18 rows under a summary of 12
    assert batch_id not in listed(), "a half-rescored batch is listed"

    again = score_folder(*args, batch_size=4, progress_every=0, flush_seconds=0.0)
    assert again["files"] == 18 and again["scored_this_run"] == 0, "work finished before the kill was redone"
    check_published_consistently(prefix)
    assert listed()[batch_id]["files"] == 18


# --- a full disk --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (skipped when mounting is not permitted here)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the size-limited store below covers a full disk instead")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the size-limited "
                    "store below covers a full disk instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=120)


def leftovers(root: Path) -> list[str]:
    """Temporary files a failed write left behind."""
    return [str(p.relative_to(root)) for p in root.rglob(".tmp-*")]


def test_a_full_tmpfs_fails_clearly_and_a_rerun_finishes(champion, tiny_tmpfs, tmp_path):
    folder = make_folder(tmp_path / "batch", seed=1)
    store = tiny_tmpfs / "artifacts"
    store.mkdir()
    filler = tiny_tmpfs / "filler"
    st = os.statvfs(tiny_tmpfs)
    with open(filler, "wb") as fh:  # leave two blocks: a ledger chunk or two fit, then the disk is full
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 2 * st.f_frsize))
    args = (str(folder), str(store), champion["predictor"], champion["version"])
    with pytest.raises(ScoringError) as info:
        score_folder(*args, batch_size=2, progress_every=0, flush_seconds=0.0)
    message = str(info.value)
    assert "no space left on device" in message.lower() and str(store) in message, message
    prefix = store / results_prefix(batch_id_for(str(folder)))
    assert not (prefix / "summary.json").exists() and not (prefix / "results.csv").exists()
    assert not leftovers(store), leftovers(store)
    done_before = ledger_paths(prefix)

    filler.unlink()  # space again: the rerun finishes the batch
    summary = score_folder(*args, batch_size=4, progress_every=0, flush_seconds=0.0)
    assert summary["scored_this_run"] <= FILES - len(done_before)
    check_complete(summary, folder, reference_scores(champion, folder))
    assert not leftovers(store)


class FullAt(LocalStore):
    """A local store whose disk is full for one write: the first one whose key ends with ``full_at``."""

    def __init__(self, root: Path, full_at: str):
        super().__init__(root)
        self.full_at = full_at
        self.failed: list[str] = []

    def _check(self, key: str) -> None:
        if not self.failed and key.endswith(self.full_at):
            self.failed.append(key)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_bytes(self, key: str, data: bytes) -> None:
        self._check(key)
        super().write_bytes(key, data)

    def upload_file(self, local_path: str | Path, key: str) -> None:
        self._check(key)
        super().upload_file(local_path, key)


@pytest.mark.parametrize("full_at", ["-000002.jsonl", "results.csv", "results.jsonl", "summary.json",
                                     "ledger.jsonl"])
def test_a_disk_full_at_each_write(full_at: str, champion, tmp_path):
    """Out of space at each write of a run: a clear error and no batch that looks complete, except when only
    the ledger's compaction fails (an optimisation: the run completes and keeps its chunks)."""
    from app.catalog import Catalog

    folder = make_folder(tmp_path / "batch", n=12, seed=2)
    root = tmp_path / "artifacts"
    store = FullAt(root, full_at)
    args = (str(folder), store, champion["predictor"], champion["version"])
    prefix = root / results_prefix(batch_id_for(str(folder)))
    if full_at == "ledger.jsonl":
        summary = score_folder(*args, batch_size=2, progress_every=0, flush_seconds=0.0)
        assert store.failed and summary["files"] == 12 and list((prefix / "ledger").glob("*.jsonl"))
    else:
        with pytest.raises(ScoringError, match="(?i)no space left on device") as info:
            score_folder(*args, batch_size=2, progress_every=0, flush_seconds=0.0)
        assert store.failed, "the full disk was not injected"
        assert str(root) in str(info.value)
        assert not (prefix / "summary.json").exists()
        assert Catalog(open_store(root), 0.0).batches() == []  # the viewer does not show a half batch
    assert not leftovers(root)
    for name in ("results.csv", "results.jsonl"):
        if (prefix / name).exists():  # whole or absent
            assert len((prefix / name).read_text("utf-8").splitlines()) == 12 + (name == "results.csv")

    again = score_folder(str(folder), str(root), champion["predictor"], champion["version"], batch_size=4,
                         progress_every=0, flush_seconds=0.0)
    assert again["files"] == 12 and again["errors"] == 0
    check_complete(again, folder, reference_scores(champion, folder))
