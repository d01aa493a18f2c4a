"""Batch-scoring throughput: the flow's scoring core against a naive loop and the decode-only ceiling.

    python bench/score_throughput.py                 # everything, 1.5 to 4 minutes on 2 cores (first run: more,
                                                     # it builds the 20,000-file folder once)
    python bench/score_throughput.py --quick         # smaller sets, under a minute
    python bench/score_throughput.py --model tiny    # a model much cheaper than decoding: the pipeline's own limit

Measures images per second for
  (a) the scoring core (:func:`dfd.scoring.score_folder`: scan, read, sha256, decode, views, batched
      inference in the streaming tf.data pipeline, ledger, results files), on a fresh results store;
  (b) a naive per-image loop as the seed's app does it: read one file, decode, cut its views, then
      ``model.predict`` on that one image;
  (c) decode only: read + the same decoder (:func:`dfd.imageio.decode_image`) in a thread pool with one thread
      per core: the ceiling for (a);
  (d) the model alone on already-decoded views;
each as the median of interleaved rounds (with the range of (a)), and prints a/b, a/c and a/bound, where
bound = 1 / (1/c + 1/d) is what (a) would reach if decoding and the model shared the cores with no overhead at
all: a/c is capped by the model's cost, a/bound is the pipeline's own efficiency.

It does this twice: on 2,000 small images (``../shared/datasets/lfw_faceswap_2k``, 250x250 JPEG, when present,
else generated 256x256 JPEGs) and on generated camera-sized photos (1600x1200 JPEG), where decoding dominates.
Peak RSS of (a) is measured in a fresh subprocess each (``ru_maxrss``) on 2,000 and on 20,000 files (the 2,000
repeated, each copy made unique by trailing bytes after the JPEG end marker, so nothing is skipped as a
duplicate).

The model is the champion of ``artifacts/`` when there is one (``--model champion``), else a tiny patchnet
trained in a few seconds by ``tests/helpers.py`` (``--model tiny``); ``--store URL [--model-version V]``
measures a model of any artifact store instead (the real default model trained by ``dfd-retrain``, say). The
table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets" / "lfw_faceswap_2k"
CACHE = Path(tempfile.gettempdir()) / "dfd-bench-score"


# --- data -----------------------------------------------------------------------------------------------


def small_images(n: int, dest: Path) -> tuple[Path, str]:
    """``n`` small JPEGs in ``dest`` (copied from the shared set when present, else generated)."""
    if dest.is_dir() and len(list(dest.iterdir())) == n:
        return dest, (dest / ".source").read_text() if (dest / ".source").exists() else "?"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if SHARED.is_dir():
        files = sorted((SHARED / "real").iterdir())[: n // 2] + sorted((SHARED / "df").iterdir())[: n - n // 2]
        for i, src in enumerate(files):
            shutil.copyfile(src, dest / f"{i:05d}_{src.name}")
        source = f"{n} files of ../shared/datasets/lfw_faceswap_2k (250x250 JPEG q75)"
    else:
        from dfd.demo import encode_jpeg, synthetic_photo, upsampling_fake

        rng = np.random.default_rng(0)
        for i in range(n):
            img = synthetic_photo(rng, 256)
            if i % 2:
                img = upsampling_fake(img, rng)
            (dest / f"{i:05d}.jpg").write_bytes(encode_jpeg(img, 85))
        source = f"{n} generated 256x256 JPEGs (../shared/datasets not found)"
    (dest / ".source").write_text(source)
    return dest, source


def camera_images(n: int, dest: Path, size: tuple[int, int] = (1600, 1200)) -> Path:
    """``n`` camera-sized JPEGs (photo-like content plus sensor noise), made once and cached."""
    if dest.is_dir() and len([p for p in dest.iterdir() if p.suffix == ".jpg"]) == n:
        return dest
    from PIL import Image

    from dfd.demo import encode_jpeg, source_photos

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    rng = np.random.default_rng(1)
    photos = [
        np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BICUBIC), np.float32) for p in source_photos()
    ]
    for i in range(n):
        base = photos[i % len(photos)]
        gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)
        noise = rng.normal(0, 3, (size[1], size[0], 1)).astype(np.float32)
        img = np.clip(base * gain + noise + rng.uniform(-10, 10), 0, 255).astype(np.uint8)
        if i % 2:
            img = img[:, ::-1]
        (dest / f"cam_{i:04d}.jpg").write_bytes(encode_jpeg(img, 90))
    return dest


def repeated(src: Path, n: int, dest: Path) -> Path:
    """``n`` unique files made from the files of ``src`` (trailing bytes after the JPEG end marker)."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if dest.is_dir() and len(list(dest.rglob("*.jpg"))) == n:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for i in range(n):
        sub = dest / f"part{i // 2000:02d}"
        if i % 2000 == 0:
            sub.mkdir(parents=True)
        data = files[i % len(files)].read_bytes()
        (sub / f"{i:06d}.jpg").write_bytes(data + i.to_bytes(8, "big"))
    return dest


# --- model ----------------------------------------------------------------------------------------------


def model_store(choice: str, work: Path, store_url: str = "",
                version: str | None = None) -> tuple[str, str | None, str]:
    """(artifacts URL holding the model, version or None for the champion, description). The model is
    ``version`` (else the champion) of ``store_url`` (a folder or ``s3://``; default: the checkout's
    ``artifacts/``), or the tiny test model."""
    from dfd import layout
    from dfd.registry import champion_version, read_run
    from dfd.settings import Settings

    url = store_url or str(ROOT / "artifacts")
    repo = Settings.from_env().store(url)
    chosen = version or (champion_version(repo) if choice in ("auto", "champion") else None)
    if chosen:
        meta = repo.read_json(layout.run_key(chosen, layout.METADATA_FILE))
        hp = meta.get("hyperparameters", {})
        auc = read_run(repo, chosen).get("test_auc")
        what = (
            f"{'version' if version else 'champion'} {chosen} of {repo.url} ({meta.get('arch')}, width "
            f"{hp.get('width', '?')}, input {meta['input_spec']}, test AUC {auc})"
        )
        return url, chosen, what
    if choice == "champion":
        raise SystemExit(f"error: --model champion but {repo.url} has no champion")
    from helpers import publish_tiny_model

    art = work / "tiny-artifacts"
    if not (art / "champion.json").exists():
        publish_tiny_model(art)
    return str(art), None, "tiny patchnet from tests/helpers.py (width 8, one 32x32 crop, 3 epochs)"


def load(art_url: str, version: str | None):
    from dfd.scoring import load_predictor
    from dfd.settings import Settings

    return load_predictor(Settings.from_env().store(art_url), version, str(CACHE / "models"))


# --- measurements ---------------------------------------------------------------------------------------


def run_core(folder: Path, predictor, version: str, batch_size: int) -> float:
    """Images/s of the scoring core on ``folder`` with a fresh results store."""
    from dfd.scoring import score_folder

    with tempfile.TemporaryDirectory(prefix="dfd-bench-results-") as out:
        t0 = time.perf_counter()
        summary = score_folder(str(folder), out, predictor, version, batch_size=batch_size, progress_every=1e9)
        dt = time.perf_counter() - t0
    assert summary["scored_this_run"] + summary["errors"] == summary["files"], summary
    return summary["files"] / dt


def run_naive(files: list[Path], predictor) -> float:
    """Images/s of the seed-style loop: one file, decode, views, model.predict on that one image."""
    from dfd.imageio import decode_image

    model = predictor.model
    t0 = time.perf_counter()
    for path in files:
        pixels = decode_image(path.read_bytes(), predictor.max_pixels).pixels
        views = predictor.views(pixels).astype("float32")
        p = model.predict(views, verbose=0).reshape(-1)
        predictor.calibrate(p)
    return len(files) / (time.perf_counter() - t0)


def run_decode(files: list[Path], max_pixels: int) -> float:
    """Images/s of read + decode only, one thread per core (the decoder releases the GIL)."""
    from dfd.imageio import decode_image

    def one(path: Path) -> int:
        return decode_image(path.read_bytes(), max_pixels).pixels.shape[0]

    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, files[: min(len(files), 50)]))  # warm the page cache and the pool
        t0 = time.perf_counter()
        list(pool.map(one, files))
        return len(files) / (time.perf_counter() - t0)


def run_model(files: list[Path], predictor, batch_size: int) -> float:
    """Images/s of the model alone: the views of (up to) 256 decoded images scored over and over in batches,
    with no reading or decoding. With (c) it bounds (a): a core that overlapped decode and model perfectly on
    the same cores would reach 1 / (1/c + 1/d)."""
    from dfd.imageio import decode_image

    sample = files[: min(len(files), 256)]
    views = [predictor.views(decode_image(p.read_bytes(), predictor.max_pixels).pixels) for p in sample]
    # uint8, as the scorer passes them
    batches = [np.concatenate(views[i : i + batch_size]) for i in range(0, len(views), batch_size)]
    predictor.score_views(batches[0])
    done, t0 = 0, time.perf_counter()
    while done < len(files):
        for b in batches:
            predictor.score_views(b)
            done += len(b) // predictor.views_per_image
    return done / (time.perf_counter() - t0)


def warm_up(predictor, version: str, folder: Path, batch_size: int, tmp: Path) -> None:
    """One small run first, so that one-time TensorFlow set-up is not billed to the measured runs."""
    warm = tmp / "warm"
    if not warm.exists():
        warm.mkdir()
        for p in sorted(folder.glob("*.jpg"))[: batch_size * 2]:
            shutil.copyfile(p, warm / p.name)
    run_core(warm, predictor, version, batch_size)
    run_naive(sorted(warm.iterdir())[:3], predictor)


def section(name: str, folder: Path, predictor, version: str, batch_size: int, naive_n: int, rounds: int) -> dict:
    """a, b, c and d on one folder, interleaved over ``rounds`` rounds; each is the median round, and (a) also
    keeps its slowest and fastest round. The median rather than the best: a pipeline that runs at half speed
    in some runs is slow, and the best round would hide it (it did, before the pipeline was fixed)."""
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    all_rounds = []
    for _ in range(rounds):
        all_rounds.append({
            "c": run_decode(files, predictor.max_pixels),
            "a": run_core(folder, predictor, version, batch_size),
            "b": run_naive(files[:naive_n], predictor),
            "d": run_model(files, predictor, batch_size),
        })
    median = {k: float(np.median([r[k] for r in all_rounds])) for k in ("a", "b", "c", "d")}
    a_all = [r["a"] for r in all_rounds]
    return {"name": name, "files": len(files), **median, "a_min": min(a_all), "a_max": max(a_all),
            "naive_n": min(naive_n, len(files)), "rounds": all_rounds}


def cpu_description() -> str:
    """The CPU's model name and widest vector extension (Linux). The model's speed varies between machines far
    more than decoding's (the demo champion alone: 4,387 and 713 images/s on two 2-core machines, decoding 3,112
    and 1,830), so a table is only comparable with the CPU it was measured on."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return "unknown CPU"
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}
    flags = set(info.get("flags", "").split())
    vector = next((label for flag, label in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"),
                                              ("sse4_2", "sse4.2")) if flag in flags), "")
    name = info.get("model name", "unknown CPU")
    return f"{name}, {vector}" if vector else name


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_child(folder: str, art_url: str, version: str | None, batch_size: int) -> None:
    """Subprocess entry: load the model, score ``folder`` once, print peak RSS and time as JSON.

    ``peak_rss_mb`` is the process's ``ru_maxrss`` (model loading included); ``scoring_peak_mb`` is the
    peak during scoring alone (Linux: VmHWM after resetting it through /proc/self/clear_refs).
    """
    predictor, resolved = load(art_url, version)
    after_load = _proc_status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        can_reset = True
    except OSError:
        can_reset = False
    rate = run_core(Path(folder), predictor, resolved, batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _proc_status_kb("VmHWM") if can_reset else None
    print(
        json.dumps(
            {
                "peak_rss_mb": peak / 1024,
                "scoring_peak_mb": hwm / 1024 if hwm else None,
                "rss_after_model_mb": after_load / 1024 if after_load else None,
                "images_per_s": rate,
            }
        )
    )


def measure_rss(folder: Path, art_url: str, version: str | None, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        str(folder),
        "--artifacts",
        art_url,
        "--batch-size",
        str(batch_size),
    ]
    if version:
        cmd += ["--version", version]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"RSS subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("auto", "champion", "tiny"), default="auto")
    ap.add_argument("--store", default="", help="artifact store holding the model: a folder or s3://bucket/prefix "
                    "(default: the checkout's artifacts/)")
    ap.add_argument("--model-version", help="a published version of --store (default: its champion)")
    ap.add_argument("--images", type=int, default=2000, help="small images for a, b, c")
    ap.add_argument("--camera", type=int, default=200, help="camera-sized images (0: skip)")
    ap.add_argument("--naive", type=int, default=150, help="images timed for the naive loop (b)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of a, b, c, d; the median is kept")
    ap.add_argument("--rss", default="2000,20000", help="folder sizes for peak RSS ('' to skip)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="500 images, 60 camera photos, RSS on 500 and 5000")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    ap.add_argument("--version", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.artifacts, args.version, args.batch_size)
        return 0
    if args.quick:
        args.images, args.camera, args.naive, args.rss = 500, 60, 60, "500,5000"

    t_start = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    art_url, version, model_what = model_store(args.model, CACHE, args.store, args.model_version)
    predictor, resolved = load(art_url, version)
    small, source = small_images(args.images, CACHE / f"small-{args.images}")
    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as tmp:
        warm_up(predictor, resolved, small, args.batch_size, Path(tmp))
    results = [section("small", small, predictor, resolved, args.batch_size, args.naive, args.rounds)]
    if args.camera:
        cam = camera_images(args.camera, CACHE / f"camera-{args.camera}")
        results.append(section("camera", cam, predictor, resolved, args.batch_size, min(args.naive, 40), args.rounds))
    rss = {}
    for n in [int(x) for x in args.rss.split(",") if x.strip()]:
        folder = small if n == args.images else repeated(small, n, CACHE / f"repeat-{n}")
        rss[n] = measure_rss(folder, art_url, version, args.batch_size)

    cores = os.cpu_count()
    print()
    print(f"model:   {model_what}")
    print(f"data:    small = {source}")
    if args.camera:
        print(f"         camera = {args.camera} generated 1600x1200 JPEGs (q90)")
    loadavg = os.getloadavg()[0]
    print(
        f"machine: {cores} cores ({cpu_description()}; load average {loadavg:.1f} at the end); "
        f"batch size {args.batch_size}; views per image {predictor.views_per_image}; "
        f"median of {args.rounds} interleaved rounds"
    )
    print()
    print(f"{'set':<8} {'files':>6} {'(a) core':>10} {'(b) naive':>10} {'(c) decode':>11} {'(d) model':>10} "
          f"{'a/b':>7} {'a/c':>6} {'a/bound':>8} {'(a) min-max':>14}")
    for r in results:
        bound = 1 / (1 / r["c"] + 1 / r["d"])
        print(
            f"{r['name']:<8} {r['files']:>6} {r['a']:>8.1f}/s {r['b']:>8.1f}/s {r['c']:>9.1f}/s {r['d']:>8.1f}/s "
            f"{r['a'] / r['b']:>7.1f} {r['a'] / r['c']:>6.2f} {r['a'] / bound:>8.2f} "
            f"{r['a_min']:>6.0f}-{r['a_max']:.0f}/s"
        )
    print("(b) timed on the first", ", ".join(f"{r['naive_n']} ({r['name']})" for r in results), "files")
    print("(d) the model alone on decoded views; bound = 1 / (1/c + 1/d): decode and model sharing the same cores")
    if rss:
        print()
        print(f"{'files':>7} {'peak RSS':>10} {'RSS after load':>15} {'peak while scoring':>19} {'(a) images/s':>13}")
        for n, r in rss.items():
            scoring = f"{r['scoring_peak_mb']:.0f} MB" if r.get("scoring_peak_mb") else "n/a"
            after = f"{r['rss_after_model_mb']:.0f} MB" if r.get("rss_after_model_mb") else "n/a"
            print(f"{n:>7} {r['peak_rss_mb']:>7.0f} MB {after:>15} {scoring:>19} {r['images_per_s']:>13.1f}")
        sizes = sorted(rss)
        if len(sizes) >= 2:
            lo, hi = rss[sizes[0]], rss[sizes[-1]]
            print(f"peak RSS ratio {sizes[-1]} / {sizes[0]} files: {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}", end="")
            if lo.get("scoring_peak_mb") and hi.get("scoring_peak_mb"):
                print(f" (while scoring: {hi['scoring_peak_mb'] / lo['scoring_peak_mb']:.2f})")
            else:
                print()
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": model_what, "source": source, "sets": results, "rss": rss}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
