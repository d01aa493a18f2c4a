"""The model registry inside the artifact store: immutable versioned runs and an atomic champion pointer.

Layout (keys relative to ``ARTIFACTS_URL``)::

    runs/<version>/model.keras, metadata.json, metrics.json, *.png, split_manifest.csv, quarantine.json,
                   config.json, history.json, run.json      (everything the run produced)
    runs/<version>/_COMPLETE                                (written last: the file list with sizes)
    champion.json                                           (the pointer: version + history)

A version is visible only once ``_COMPLETE`` exists and every file it lists is present, and the champion
pointer only ever names such a version. The pointer is replaced with a conditional write, so two promotions
that race cannot lose an update: the loser re-reads and decides again.

Command line: ``dfd-registry list | champion | rollback [--to VERSION]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfd.layout import CHAMPION, COMPLETE, METADATA_FILE, MODEL_FILE, RUN_RECORD, RUNS, run_key
from dfd.storage import Conflict, NotFound, StorageError, Store
from dfd.storage.files import file_sha256


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no champion, unknown version, incomplete version)."""


def new_version(fingerprint: str, now: datetime | None = None) -> str:
    """A sortable, unique-enough version id: UTC time plus the first 6 hex digits of the data fingerprint."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{fingerprint[:6]}"


def publish_run(store: Store, version: str, local_dir: str | Path) -> dict[str, Any]:
    """Upload every file of a local run folder to ``runs/<version>/``, verify, then write ``_COMPLETE``.

    Re-publishing the same version (a rerun after a crash) overwrites the same keys and is safe.
    """
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    listing: dict[str, dict[str, Any]] = {}
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        if rel == COMPLETE:
            continue
        store.upload_file(path, run_key(version, rel))
        listing[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    for rel, info in listing.items():
        try:
            size = store.stat(run_key(version, rel)).size
        except NotFound:
            raise StorageError(f"published object is missing: {store.describe(run_key(version, rel))}") from None
        if size != info["bytes"]:
            raise StorageError(f"published object has the wrong size: {store.describe(run_key(version, rel))}")
    complete = {"version": version, "files": listing, "completed_at": _now()}
    store.write_json(run_key(version, COMPLETE), complete)
    return complete


def is_complete(store: Store, version: str) -> bool:
    """True when the version's ``_COMPLETE`` exists and every file it lists is present with its size."""
    try:
        complete = store.read_json(run_key(version, COMPLETE))
    except NotFound:
        return False
    present = {o.key: o.size for o in store.list(run_key(version))}
    return all(present.get(run_key(version, rel)) == info["bytes"] for rel, info in complete["files"].items())


def list_versions(store: Store) -> list[str]:
    """Every published version (with ``_COMPLETE``), newest first."""
    return sorted((v for v in store.list_dirs(RUNS) if store.exists(run_key(v, COMPLETE))), reverse=True)


def read_run(store: Store, version: str) -> dict[str, Any]:
    """A run's record (``run.json``); ``decision`` is ``pending`` until the run has written it."""
    if not store.exists(run_key(version, COMPLETE)):
        raise RegistryError(f"unknown or incomplete version {version!r}")
    try:
        return {"version": version, **store.read_json(run_key(version, RUN_RECORD))}
    except NotFound:
        return {"version": version, "decision": "pending"}


def reconcile(store: Store, older_than_s: float = 3 * 3600.0, now: float | None = None) -> list[str]:
    """Tidy what interrupted runs left, so that every version tells the truth; returns one line per action.

    Only leftovers older than ``older_than_s`` are touched (a run that is publishing right now is not a
    leftover):

    * a run folder without ``_COMPLETE`` was never visible: it is deleted, with any temporary files;
    * a published run without ``run.json`` stopped between publishing and recording its decision. If the
      champion pointer (or its history) names it, the promotion happened and is recorded as ``promoted``;
      otherwise it is recorded as ``abandoned``, so the viewer no longer shows it as pending.
    """
    now = time.time() if now is None else now
    pointer = read_champion(store) or {}
    promoted = {pointer.get("version")} | {h.get("version") for h in pointer.get("history", [])}
    done = []
    for version in store.list_dirs(RUNS):
        objects = list(store.list(run_key(version)))
        if not objects or now - max(o.mtime for o in objects) < older_than_s:
            continue  # nothing there (some S3 servers list emptied folders), or possibly a run in progress
        if not any(o.key == run_key(version, COMPLETE) for o in objects):
            store.delete_prefix(run_key(version))
            done.append(f"removed the incomplete run {version} ({len(objects)} files; never published)")
        elif not any(o.key == run_key(version, RUN_RECORD) for o in objects):
            if version in promoted:
                record = {"decision": "promoted", "reason": "recorded after an interrupted run: the champion "
                          "pointer names this version, so its promotion happened"}
            else:
                record = {"decision": "abandoned", "reason": "the run was interrupted after publishing and "
                          "before its promotion decision; it was never champion"}
            store.write_json(run_key(version, RUN_RECORD), {"version": version, **record,
                                                            "reconciled_at": _now()})
            done.append(f"recorded run {version} as {record['decision']}")
    return done


def read_champion(store: Store) -> dict[str, Any] | None:
    """The champion pointer (``{"version": ..., "promoted_at": ..., "history": [...]}``), or ``None``."""
    try:
        return store.read_json(CHAMPION)
    except NotFound:
        return None


def champion_version(store: Store) -> str | None:
    pointer = read_champion(store)
    return pointer["version"] if pointer else None


def set_champion(store: Store, version: str, reason: str, expected: str | None | object = ...) -> dict:
    """Point the champion at ``version`` atomically.

    ``expected`` is the champion version the caller based its decision on; if the pointer moved since,
    :class:`Conflict` is raised so that the caller re-decides. Without it, the switch is unconditional
    (but still never loses a concurrent update: it retries the conditional write).
    """
    if not is_complete(store, version):
        raise RegistryError(f"refusing to promote {version!r}: it is not completely published")
    for _ in range(20):
        data, token = store.read_versioned(CHAMPION)
        current = json.loads(data) if data else None
        current_version = current["version"] if current else None
        if expected is not ... and current_version != expected:
            raise Conflict(f"champion changed from {expected!r} to {current_version!r} while deciding")
        history = list(current.get("history", [])) if current else []
        if current:
            history.append({k: current[k] for k in ("version", "promoted_at", "reason") if k in current})
        pointer = {"version": version, "promoted_at": _now(), "reason": reason, "history": history[-50:]}
        try:
            store.write_if_unchanged(CHAMPION, (json.dumps(pointer, indent=2) + "\n").encode(), token)
            return pointer
        except Conflict:
            if expected is not ...:
                raise
            time.sleep(0.05)
    raise Conflict("could not update the champion pointer after 20 attempts")


def rollback(store: Store, to: str | None = None) -> dict:
    """Point the champion back at ``to``, or at the previous champion when ``to`` is None."""
    pointer = read_champion(store)
    if pointer is None:
        raise RegistryError("there is no champion to roll back")
    if to is None:
        previous = [h["version"] for h in pointer.get("history", []) if h["version"] != pointer["version"]]
        if not previous:
            raise RegistryError("the champion has no previous version to roll back to")
        to = previous[-1]
    if to not in list_versions(store):
        raise RegistryError(f"unknown version {to!r}; see 'dfd-registry list'")
    return set_champion(store, to, reason=f"rollback from {pointer['version']}")


def fetch_model_dir(store: Store, version: str, cache_dir: str | Path) -> Path:
    """A local folder holding the version's model and metadata (the store's own folder when it is local,
    else a download into ``<cache_dir>/models/<version>``, reused: a published version never changes)."""
    if not is_complete(store, version):
        raise RegistryError(f"unknown or incomplete version {version!r}")
    return store.local_folder(run_key(version), (MODEL_FILE, METADATA_FILE), Path(cache_dir) / "models" / version)


def resolve_version(store: Store, version: str | None) -> str:
    """``version`` if given (checked), else the champion's; a clear error when there is none."""
    if version:
        if not is_complete(store, version):
            raise RegistryError(f"unknown or incomplete model version {version!r} in {store.describe(RUNS)}")
        return version
    champ = champion_version(store)
    if not champ:
        raise RegistryError(
            f"no champion model in {store.url}: run the retraining flow first (make demo or dfd-retrain)"
        )
    return champ


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """``dfd-registry``: list versions, show the champion, or roll back."""
    from dfd.settings import Settings

    parser = argparse.ArgumentParser(prog="dfd-registry", description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", help="artifact store URL (default: ARTIFACTS_URL or ./artifacts)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list published versions, newest first")
    sub.add_parser("champion", help="show the champion pointer")
    rb = sub.add_parser("rollback", help="point the champion at the previous (or a given) version")
    rb.add_argument("--to", help="version to roll back to (default: the previous champion)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(artifacts_url=args.artifacts)
    store = settings.store(settings.artifacts_url)
    try:
        if args.cmd == "list":
            champ = champion_version(store)
            for v in list_versions(store):
                run = read_run(store, v)
                auc = run.get("test_auc")
                auc_text = f"{auc:.4f}" if isinstance(auc, float) else "-"
                mark = "*" if v == champ else " "
                print(f"{mark} {v}  test_auc={auc_text}  {run.get('decision', '')}")
        elif args.cmd == "champion":
            print(json.dumps(read_champion(store), indent=2))
        else:
            pointer = rollback(store, args.to)
            print(f"champion is now {pointer['version']} ({pointer['reason']})")
    except (RegistryError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
