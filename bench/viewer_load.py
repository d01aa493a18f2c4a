"""Load benchmark for the viewer under its production server (waitress, ``python -m app``).

Builds a throwaway artifact store with a tiny champion, a rejected run with plots, a small batch and one
batch of ``--rows`` rows (100,000 by default: 200 scored files, the rest written by the project's results
writer, see ``tests/test_soak.py``'s :func:`build_load_store`); starts the server on a free loopback port and
waits until it has loaded the model (``/readyz``); warms each endpoint at the same concurrency; then, one
endpoint at a time, ``--concurrency`` clients (16), each on its own keep-alive connection, send requests for
``--seconds`` (30) each:

* ``overview``: ``GET /``
* ``batch``: ``GET /batches/<id>`` of the big batch, rotating over first, middle and last pages, label
  filters and score sorts
* ``predict``: ``POST /api/predict`` with 64 x 64 PNGs

The server keeps its production settings: with 16 clients, predict fills its bounded queue
(``VIEWER_PREDICT_CONCURRENCY`` 2 slots, ``VIEWER_PREDICT_QUEUE`` 4 waiting) and answers the rest 503 with
``Retry-After`` at once, as documented; the table counts them apart, and its latencies are those of the 200s.
``--predict-queue N`` raises the queue to measure throughput instead. Each endpoint's row gives the server's
resident memory before and after it and its peak during it (``VmHWM``, reset per endpoint where Linux allows).

Exit status 1 when any answer was not whole, or neither a 200 nor (predict) a 503 with Retry-After.
Absolute times on a shared machine are noise; compare rows and ratios within one run.

    .venv/bin/python bench/viewer_load.py [--rows 100000] [--concurrency 16] [--seconds 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_soak import bad_answers, build_load_store, endpoint_plans, hammer, rss_mb  # noqa: E402
from viewer_big_upload import reset_peak  # noqa: E402
from viewer_fixtures import start_server, stop_server, wait_ready  # noqa: E402


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the big batch")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of load per endpoint")
    parser.add_argument("--predict-queue", type=int, help="VIEWER_PREDICT_QUEUE for the server (default: its own)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    env: dict[str, str] = {}
    if args.predict_queue is not None:
        env["VIEWER_PREDICT_QUEUE"] = str(args.predict_queue)
    results: dict[str, dict] = {}
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="viewer-load-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_load_store(root / "artifacts", args.rows)
        print(f"store built in {time.perf_counter() - t0:.1f} s ({args.rows:,}-row batch)", flush=True)
        proc, base = start_server(root / "artifacts", env={"DFD_WORK_DIR": str(root / "work"), **env})
        try:
            wait_ready(base)
            plans = endpoint_plans(args.rows)
            start_rss = rss_mb(proc.pid)
            for name, plan in plans.items():  # warm-up: caches, the big table, every server thread
                bad += bad_answers(name, hammer(base, plan, args.concurrency, per_client=2))
            warm_rss = rss_mb(proc.pid)
            print(f"server RSS: {start_rss:.0f} MB with the model loaded, {warm_rss:.0f} MB after the warm-up",
                  flush=True)
            for name, plan in plans.items():
                reset = reset_peak(proc.pid)
                before = rss_mb(proc.pid)
                started = time.perf_counter()
                answers = hammer(base, plan, args.concurrency, seconds=args.seconds)
                wall = time.perf_counter() - started
                after, peak = rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM")
                bad += bad_answers(name, answers)
                ok = sorted(a.seconds * 1000 for a in answers if a.status == 200)
                results[name] = {
                    "requests": len(answers), "ok": len(ok), "busy_503": sum(a.status == 503 for a in answers),
                    "bad": len(bad_answers(name, answers)), "req_per_s": len(answers) / wall,
                    "ok_per_s": len(ok) / wall, "p50_ms": statistics.median(ok) if ok else float("nan"),
                    "p99_ms": percentile(ok, 0.99), "max_ms": ok[-1] if ok else float("nan"),
                    "rss_before_mb": before, "rss_after_mb": after, "peak_mb": peak, "peak_reset": reset,
                }
                print(f"{name}: {len(answers)} answers in {wall:.1f} s", flush=True)
            end_rss = rss_mb(proc.pid)
        finally:
            stop_server(proc)

    print(f"\n{args.concurrency} clients x {args.seconds:g} s per endpoint, waitress on loopback, batch of "
          f"{args.rows:,} rows; latencies of the 200s")
    print(f"{'endpoint':<9} {'answers':>7} {'200':>6} {'503':>5} {'bad':>4} {'200/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'RSS before':>10} {'RSS after':>9} {'peak':>6}")
    for name, r in results.items():
        print(f"{name:<9} {r['requests']:>7} {r['ok']:>6} {r['busy_503']:>5} {r['bad']:>4} {r['ok_per_s']:>7.1f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['rss_before_mb']:>10.0f} "
              f"{r['rss_after_mb']:>9.0f} {r['peak_mb']:>6.0f}")
    peaks = "per endpoint" if all(r["peak_reset"] for r in results.values()) else "since start (clear_refs refused)"
    print(f"server RSS (MB): after warm-up {warm_rss:.0f}, after all endpoints {end_rss:.0f} "
          f"({end_rss - warm_rss:+.0f}); peak {peaks}")
    if bad:
        print(f"{len(bad)} bad answers, first: {bad[:5]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "concurrency": args.concurrency,
                                               "seconds": args.seconds, "rss_warm_mb": warm_rss,
                                               "rss_end_mb": end_rss, "results": results, "bad": bad[:50]},
                                              indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
