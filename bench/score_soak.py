"""Scoring soak: the same inbox folder scored ``--runs`` times in one process, ``--per-run`` new files each time.

Publishes a tiny model into a throwaway store, then runs :func:`dfd.scoring.score_folder` over one folder
that gains ``--per-run`` tiny PNGs before every run (the driver is ``tests/test_soak.py``'s
:func:`score_soak`, which the slow test runs with assertions). Prints, for each run, the files in the folder,
the files decoded this run, the run's seconds, seconds per new file and this process's resident memory; then
the ratio of the mean time per new file over the last 10 runs to the first 10 (1.0: no growth), and the memory
growth from run 10 to the last (the first runs load TensorFlow's kernels and are not steady state).

    .venv/bin/python bench/score_soak.py [--runs 50] [--per-run 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import publish_tiny_model  # noqa: E402
from test_soak import rss_mb, score_soak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--per-run", type=int, default=20, help="new files added before each run")
    parser.add_argument("--json", help="also write the per-run rows to this file")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be at least 20 (the first and last 10 are compared)")

    from dfd.scoring import load_predictor
    from dfd.storage import open_store

    rows = []
    with tempfile.TemporaryDirectory(prefix="score-soak-") as tmp:
        root = Path(tmp)
        publish_tiny_model(root / "artifacts")
        predictor, version = load_predictor(open_store(str(root / "artifacts")), None, root / "work")
        start_rss = rss_mb()
        print(f"tiny model {version}; RSS after loading it {start_rss:.0f} MB; {args.per_run} new files per run")
        print(f"{'run':>4} {'files':>6} {'decoded':>7} {'run s':>7} {'s/new file':>10} {'RSS MB':>7}")
        for r in score_soak(root / "inbox", root / "artifacts", predictor, version, args.runs, args.per_run):
            row = {"run": r["run"], "files": r["summary"]["files"], "decoded": r["decoded"],
                   "seconds": r["seconds"], "s_per_file": r["seconds"] / len(r["new"]), "rss_mb": r["rss_mb"]}
            rows.append(row)
            print(f"{row['run']:>4} {row['files']:>6} {row['decoded']:>7} {row['seconds']:>7.2f} "
                  f"{row['s_per_file']:>10.4f} {row['rss_mb']:>7.0f}", flush=True)

    first = statistics.mean(r["s_per_file"] for r in rows[:10])
    last = statistics.mean(r["s_per_file"] for r in rows[-10:])
    print(f"\ntime per new file: first 10 runs {first:.4f} s, last 10 runs {last:.4f} s, "
          f"ratio last/first {last / first:.2f}")
    print(f"RSS: run 1 {rows[0]['rss_mb']:.0f} MB, run 10 {rows[9]['rss_mb']:.0f} MB, run {rows[-1]['run']} "
          f"{rows[-1]['rss_mb']:.0f} MB (growth from run 10: {rows[-1]['rss_mb'] - rows[9]['rss_mb']:+.0f} MB)")
    print(f"decoded per run == new files in every run: {all(r['decoded'] == args.per_run for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_run": args.per_run, "runs": rows, "ratio_last_first": last / first},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
