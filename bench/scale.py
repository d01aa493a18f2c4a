"""Scale-out: one folder scored in-process and on a local Dask cluster of 1 and 2 workers, through the real flow.

    python bench/scale.py                                   # 300 lfw_faceswap_2k files, default-size model
    python bench/scale.py --images 600 --shard-files 64
    python bench/scale.py --store DIR|s3://... [--model-version V]   # a published model (say, the champion)

Every engine runs the ``score-folder`` flow (:func:`flows.score_batch.score_folder_flow`) under a temporary
Prefect server, on its own hard-linked copy of the folder (a fresh batch each: nothing is reused from a ledger).
TensorFlow's start-up and the model load are not billed: one in-process warm-up run first, and every Dask
worker loads the model and scores one image before the measured runs (a long-lived cluster pays that once per
worker). The three engines run in ``--rounds`` interleaved rounds and the median is kept (on a shared machine
the load drifts between runs; the rounds are printed). Printed:

* files/s of each engine (the flow's wall time: listing, shards, merge and results included) and its ratio to
  the in-process engine; the Dask clusters are ``distributed.LocalCluster``\\ s with one thread per worker
  process, kept alive across the runs (as an existing cluster given by ``--dask-address`` would be);
* the engine overhead per shard: one worker, the same files in shards of ``--small-shard`` files and in one
  shard; (difference in seconds) / (difference in shard count);
* the model's own cost per image: the predictor alone on already-decoded views, batches of ``--batch-size``.

The model: ``--store``/``--model-version`` (as ``bench/score_throughput.py``), else the champion of the
checkout's ``artifacts/``, else ``--model default-arch``: an *untrained* model of the default architecture and
input (patchnet, width 32, ``DFD_EVAL_CROPS`` crops of 128 px: 5 by default), which costs what the trained
default costs per image (its scores mean nothing, and nothing here looks at them); ``--model tiny`` is the
test suite's tiny model. The table says which.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "dfd-bench-scale"


def source_folder(n: int) -> tuple[Path, str]:
    """``n`` files, half real and half fake, from lfw_faceswap_2k (else generated 256 px JPEGs): the inputs of
    ``bench/score_throughput.py``, cached under their own folder."""
    from score_throughput import small_images

    return small_images(n, CACHE / f"files-{n}")


def fresh_copy(src: Path, name: str, limit: int | None = None) -> Path:
    """A hard-linked copy of (the first ``limit`` files of) ``src`` at a new path: a new batch id, no ledger."""
    dest = CACHE / "runs" / f"{name}-{time.time_ns()}"
    dest.mkdir(parents=True)
    for p in sorted(src.iterdir())[:limit]:
        os.link(p, dest / p.name)
    return dest


def model_store(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(artifacts URL, version or None for the champion, description)."""
    from dfd.registry import champion_version
    from dfd.settings import Settings

    if args.store:
        repo = Settings.from_env().store(args.store)
        version = args.model_version or champion_version(repo)
        return args.store, version, f"version {version} of {repo.url}"
    local = ROOT / "artifacts"
    if args.model == "auto" and (local / "champion.json").exists():
        version = champion_version(Settings.from_env().store(str(local)))
        return str(local), version, f"champion {version} of artifacts/"
    views = Settings.from_env().eval_crops  # DFD_EVAL_CROPS; the cached default-architecture model is per count
    # ... and per version of the builders' code, so a cache made before an architecture change is not reused
    code = hashlib.sha256((ROOT / "dfd" / "model.py").read_bytes()).hexdigest()[:8]
    art = CACHE / ("model-tiny" if args.model == "tiny" else f"model-default-arch-x{views}-{code}")
    if args.model == "tiny":
        if not (art / "champion.json").exists():
            from helpers import publish_tiny_model

            publish_tiny_model(art)
        return str(art), None, "tiny patchnet of tests/helpers.py (width 8, one 32 px crop)"
    if not (art / "champion.json").exists():
        publish_default_arch(art, views)
    return str(art), None, (f"untrained default-architecture patchnet (width 32, {views} crop(s) of 128 px): "
                            "the trained default's cost per image, meaningless scores")


def publish_default_arch(art: Path, views: int) -> None:
    """Publish an untrained model of the default architecture, scoring ``views`` crops of images larger than a
    crop, as the champion of ``art``."""
    from dfd.model import build_model, input_spec_for, save_model
    from dfd.registry import publish_run, set_champion
    from dfd.settings import Settings
    from dfd.storage import open_store

    s = Settings()
    spec = input_spec_for(s.arch, s.max_crop_size, eval_crops=views)
    model = build_model(s.arch, spec["size"], width=s.width, seed=0)
    version = "20260101-000000-defarch"
    meta = {"input_spec": spec, "threshold": 0.5, "class_names": ["real", "deepfake"], "arch": s.arch,
            "temperature": 1.0, "version": version, "metrics": {"test": {"roc_auc": 0.5}},
            "data_fingerprint": "0" * 64}
    store = open_store(str(art))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, meta, tmp)
        publish_run(store, version, tmp)
    store.write_json(f"runs/{version}/run.json", {"version": version, "decision": "promoted", "test_auc": 0.5})
    set_champion(store, version, reason="bench/scale.py: untrained default architecture")


def run_flow(folder: Path, art: str, version: str | None, batch_size: int, **engine) -> tuple[float, dict]:
    """Wall seconds of one ``score-folder`` flow run, and its summary."""
    from flows.score_batch import score_folder_flow

    t0 = time.perf_counter()
    summary = score_folder_flow(path=str(folder), artifacts_url=art, model_version=version, batch_size=batch_size,
                                **engine)
    dt = time.perf_counter() - t0
    assert summary["checked_this_run"] == summary["files"], summary
    return dt, summary


def model_cost(art: str, version: str | None, folder: Path, batch_size: int) -> tuple[float, float]:
    """(ms per image, images/s) of the predictor alone on decoded views, in this process."""
    from dfd.imageio import decode_image
    from dfd.scoring import load_predictor
    from dfd.settings import Settings

    predictor, _ = load_predictor(Settings.from_env().store(art), version, str(CACHE / "models"))
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))[:batch_size]  # not .source
    views = np.concatenate([predictor.views(decode_image(p.read_bytes()).pixels) for p in files])  # uint8, as scored
    predictor.score_views(views)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 10 or done < 4 * len(files):
        predictor.score_views(views)
        done += len(files)
    dt = time.perf_counter() - t0
    return 1000 * dt / done, done / dt


def warm_workers(client, art: str, version: str) -> None:
    """Load the model on every worker of ``client``'s cluster and score one image's views there (TensorFlow's
    start-up and the first trace): what a long-lived cluster has done before any measured batch arrives."""

    def warm(art: str, version: str) -> int:
        from dfd.scoring.shards import worker_predictor
        from dfd.settings import Settings

        predictor = worker_predictor(Settings.from_env(), art, version)
        size = int(predictor.spec["size"])
        predictor.score_views(np.zeros((predictor.views_per_image, size, size, 3), np.uint8))  # the scorer's dtype
        return os.getpid()

    client.run(warm, art, version)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--store", default="", help="artifact store holding the model (a folder or s3://...)")
    ap.add_argument("--model-version", help="a published version of --store (default: its champion)")
    ap.add_argument("--model", choices=("auto", "default-arch", "tiny"), default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-files", type=int, default=64, help="files per shard of the measured Dask runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three engines; median kept")
    ap.add_argument("--small-shard", type=int, default=8, help="shard size of the per-shard overhead run")
    ap.add_argument("--overhead-files", type=int, default=96, help="files of the per-shard overhead runs")
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from dfd.registry import resolve_version
    from dfd.settings import Settings

    folder, what = source_folder(args.images)
    art, version, model_what = model_store(args)
    version = resolve_version(Settings.from_env().store(art), version)
    names = ["in-process", "Dask LocalCluster, 1 worker", "Dask LocalCluster, 2 workers"]
    times: dict[str, list[float]] = {n: [] for n in names}
    with prefect_test_harness(server_startup_timeout=180), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as one, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as two, \
            Client(one) as c1, Client(two) as c2:
        c1.wait_for_workers(1)
        c2.wait_for_workers(2)
        engines = {names[0]: {}, names[1]: {"dask_address": one.scheduler_address},
                   names[2]: {"dask_address": two.scheduler_address}}
        run_flow(fresh_copy(folder, "warm", 16), art, version, args.batch_size)
        warm_workers(c1, art, version)
        warm_workers(c2, art, version)
        for _ in range(args.rounds):
            for name, engine in engines.items():
                extra = {"shard_files": args.shard_files} if engine else {}
                dt, _ = run_flow(fresh_copy(folder, "run"), art, version, args.batch_size, **engine, **extra)
                times[name].append(dt)
        k = args.overhead_files
        t_small, _ = run_flow(fresh_copy(folder, "small", k), art, version, args.batch_size,
                              **engines[names[1]], shard_files=args.small_shard)
        t_one, _ = run_flow(fresh_copy(folder, "one", k), art, version, args.batch_size, **engines[names[1]],
                            shard_files=k)
        shards = -(-k // args.small_shard)
        ms, ips = model_cost(art, version, folder, args.batch_size)

    med = {n: float(np.median(t)) for n, t in times.items()}
    base = args.images / med[names[0]]
    print(f"\nfolder: {what}; model: {model_what}")
    print(f"CPU cores: {os.cpu_count()}; load average at the end: {os.getloadavg()[0]:.1f}; batch size "
          f"{args.batch_size}; shards of {args.shard_files} files; median of {args.rounds} interleaved rounds\n")
    print("| engine | wall s (median) | rounds, s | files/s | ratio to in-process |\n|---|---|---|---|---|")
    for n in names:
        fps = args.images / med[n]
        print(f"| {n} | {med[n]:.1f} | {', '.join(f'{t:.1f}' for t in times[n])} | {fps:.1f} | {fps / base:.2f} |")
    print(f"\nengine overhead per shard: {(t_small - t_one) / (shards - 1):.2f} s ({k} files on 1 worker: "
          f"{shards} shards of {args.small_shard} in {t_small:.1f} s, 1 shard in {t_one:.1f} s)")
    print(f"model alone: {ms:.1f} ms per image, {ips:.1f} images/s (decoded views, this process, all cores)")
    shutil.rmtree(CACHE / "runs", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
