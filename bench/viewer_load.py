"""Load benchmark for the viewer under its production server (waitress, ``python -m app``).

Builds a throwaway artifact store with a tiny trained champion, its run files and plots, and one scored
batch of ``--rows`` rows (100,000 by default); starts the server on a free loopback port; then, one endpoint
at a time, sends ``--requests`` requests with ``--concurrency`` threads (each with its own keep-alive
connection) and prints requests per second, p50 and p99 latency and errors:

* ``overview``: ``GET /``
* ``batch``: ``GET /batches/<id>`` of the big batch, rotating over first, middle and last pages, label
  filters and score sorts
* ``predict``: ``POST /api/predict`` with a 64 x 64 PNG

Targets (checked, exit status 1 when missed): overview p99 < 50 ms, batch p99 < 150 ms, zero errors.

The server runs with ``VIEWER_PREDICT_QUEUE`` raised to ``--concurrency``, so that every predict request
waits for one of the ``VIEWER_PREDICT_CONCURRENCY`` slots instead of being refused with 503 (by default at
most 4 wait); this measures throughput, ``bench/viewer_big_upload.py`` the refusals.

    .venv/bin/python bench/viewer_load.py [--rows 100000] [--concurrency 8] [--requests 800]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import png_bytes  # noqa: E402
from viewer_fixtures import build_store, sample_image, start_server, stop_server, write_batch  # noqa: E402

TARGETS_P99_MS = {"overview": 50.0, "batch": 150.0}
BATCH_ID = "load-100k"


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Worker(threading.local):
    conn: http.client.HTTPConnection | None = None


def run_load(base: str, requests: list[tuple[str, str, bytes | None, dict[str, str]]], concurrency: int) -> dict:
    """Send ``requests`` with ``concurrency`` threads; latency of each, errors, throughput."""
    netloc = urlsplit(base).netloc
    local = Worker()

    def one(req: tuple[str, str, bytes | None, dict[str, str]]) -> tuple[float, bool]:
        method, path, body, headers = req
        for attempt in range(2):
            if local.conn is None:
                local.conn = http.client.HTTPConnection(netloc, timeout=30)
            start = time.perf_counter()
            try:
                local.conn.request(method, path, body=body, headers=headers)
                resp = local.conn.getresponse()
                resp.read()
                elapsed = time.perf_counter() - start
                return elapsed, resp.status == 200
            except (ConnectionError, http.client.HTTPException, OSError):
                local.conn.close()
                local.conn = None
                if attempt:
                    return time.perf_counter() - start, False
        return 0.0, False

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    lat = sorted(r[0] * 1000 for r in results)
    return {
        "requests": len(results),
        "errors": sum(not ok for _, ok in results),
        "req_per_s": len(results) / wall,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
        "max_ms": lat[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the big batch")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800, help="requests per page endpoint")
    parser.add_argument("--predict-requests", type=int, default=200)
    parser.add_argument("--refresh", default="2",
                        help="VIEWER_REFRESH_SECONDS for the server (default 2, the viewer's default)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="viewer-load-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        info = build_store(root / "artifacts", batch_rows=40, batch_id="small-batch")
        write_batch(info["artifacts"], BATCH_ID, root / "inbox" / BATCH_ID, args.rows, n_images=200)
        print(f"store built in {time.perf_counter() - t0:.1f} s ({args.rows:,}-row batch)", flush=True)
        proc, base = start_server(info["artifacts"], env={"DFD_WORK_DIR": str(root / "work"),
                                                          "VIEWER_REFRESH_SECONDS": args.refresh,
                                                          "VIEWER_PREDICT_QUEUE": str(args.concurrency)})
        try:
            # Warm up: the first batch request parses the results; the first predict loads the model.
            warm = {}
            for name, req in {
                "batch (first request, parses the results)": ("GET", f"/batches/{BATCH_ID}", None, {}),
                "predict (first request, loads the model)": ("POST", "/api/predict",
                                                             *_predict_body()),
            }.items():
                r = run_load(base, [req], 1)
                warm[name] = r["p50_ms"]
                print(f"warm-up {name}: {r['p50_ms']:.0f} ms, errors {r['errors']}", flush=True)

            pages = max(1, args.rows // 50)
            batch_paths = [
                f"/batches/{BATCH_ID}",
                f"/batches/{BATCH_ID}?page={pages // 2}",
                f"/batches/{BATCH_ID}?page={pages}",
                f"/batches/{BATCH_ID}?label=deepfake&sort=score_desc",
                f"/batches/{BATCH_ID}?label=real&sort=score_asc&page=300",
                f"/batches/{BATCH_ID}?label=error&page=20",
                f"/batches/{BATCH_ID}?sort=score_desc&page=1000",
            ]
            plans = {
                "overview": [("GET", "/", None, {})] * args.requests,
                "batch": [("GET", batch_paths[i % len(batch_paths)], None, {}) for i in range(args.requests)],
                "predict": [("POST", "/api/predict", *_predict_body(i))
                            for i in range(args.predict_requests)],
            }
            for plan in plans.values():  # a short warm-up of each plan's variants
                run_load(base, plan[: 2 * args.concurrency], args.concurrency)
            results = {name: run_load(base, plan, args.concurrency) for name, plan in plans.items()}
        finally:
            stop_server(proc)

    print(f"\nconcurrency {args.concurrency}, waitress on loopback, batch of {args.rows:,} rows, "
          f"refresh {args.refresh} s")
    print(f"{'endpoint':<10} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    ok = True
    for name, r in results.items():
        print(f"{name:<10} {r['requests']:>8} {r['errors']:>6} {r['req_per_s']:>8.1f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}")
        if r["errors"]:
            ok = False
        if name in TARGETS_P99_MS and r["p99_ms"] >= TARGETS_P99_MS[name]:
            ok = False
    print("targets: overview p99 < 50 ms, batch p99 < 150 ms, zero errors ->", "MET" if ok else "MISSED")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "concurrency": args.concurrency,
                                               "warm_up_ms": warm, "results": results}, indent=2))
    return 0 if ok else 1


def _predict_body(i: int = 0) -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart("image", f"u{i}.png", png_bytes(sample_image(i % 16, 64)))
    return body, {"Content-Type": ctype}


if __name__ == "__main__":
    raise SystemExit(main())
