"""Peak memory and latency of the viewer for a small file that decodes to a big image (issue 14).

Publishes a tiny trained champion into a throwaway artifact store, starts the production server
(``python -m app``, waitress) on a free loopback port, warms the model with one small upload, then posts a
``--side`` x ``--side`` PNG (a smooth gradient: about 120 KB for 6000 px, under the 40 MP limit) to
``POST /api/predict?explain=1`` (Grad-CAM), first alone and then ``--concurrency`` at once. For each phase it
prints the HTTP statuses, the latency (median and worst) and the server's peak resident memory, read from
``VmHWM`` in ``/proc/<pid>/status`` (reset between phases by writing 5 to ``/proc/<pid>/clear_refs``).

    .venv/bin/python bench/viewer_big_upload.py [--side 6000] [--concurrency 8] [--no-explain] [--json FILE]

Run it from another checkout (``cd /tmp/orig && /work/main/.venv/bin/python bench/viewer_big_upload.py``) to
measure that checkout's viewer: the server runs from the folder the script is in.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from helpers import png_bytes, publish_tiny_model  # noqa: E402
from PIL import Image  # noqa: E402
from viewer_fixtures import sample_image, start_server, stop_server  # noqa: E402


def big_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG that compresses to almost nothing (a horizontal gradient)."""
    row = np.linspace(0, 255, side).astype(np.uint8)
    pixels = np.broadcast_to(row[None, :, None], (side, side, 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(base: str, path: str, body: bytes, ctype: str, timeout: float) -> tuple[int, float, dict]:
    """One POST on its own connection: status, seconds, parsed JSON body (or {})."""
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {}
        if resp.getheader("Retry-After"):
            payload["retry_after"] = resp.getheader("Retry-After")
        return resp.status, elapsed, payload
    except OSError as exc:
        return 0, time.perf_counter() - start, {"error": str(exc)}
    finally:
        conn.close()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> bool:
    """Reset the peak-RSS counter of ``pid`` (Linux: 5 > clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def phase(base: str, pid: int, n: int, body: bytes, ctype: str, path: str, timeout: float) -> dict:
    """Post ``n`` uploads at once (a barrier releases them together); statuses, latencies, peak RSS."""
    reset = reset_peak(pid)
    before = proc_status(pid)
    barrier = threading.Barrier(n)
    results: list[tuple[int, float, dict]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        r = post(base, path, body, ctype, timeout)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = proc_status(pid)
    lat = sorted(r[1] for r in results if r[0] == 200) or [float("nan")]
    refused = [r[1] for r in results if r[0] != 200]
    ok = [r[2] for r in results if r[0] == 200]
    return {
        "uploads": n,
        "statuses": dict(Counter(r[0] for r in results)),
        "p50_s": statistics.median(lat),
        "max_s": lat[-1],
        "refused_max_s": max(refused) if refused else None,
        "idle_rss_mb": before["VmRSS"] / 1024,
        "peak_rss_mb": after["VmHWM"] / 1024,
        "peak_reset": reset,
        "scores": sorted({round(p["score"], 6) for p in ok if "score" in p}),
        "retry_after": sorted({p["retry_after"] for p in (r[2] for r in results) if "retry_after" in p}),
        "errors": sorted({str(r[2].get("error", ""))[:80] for r in results if r[0] != 200}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=6000, help="width and height of the big PNG")
    parser.add_argument("--concurrency", type=int, default=8, help="uploads posted at once in the second phase")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads (the viewer's default is 8)")
    parser.add_argument("--no-explain", action="store_true", help="score only, without Grad-CAM")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one answer")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    data = big_png(args.side)
    body, ctype = multipart(data, "big.png")
    path = "/api/predict" + ("" if args.no_explain else "?explain=1")
    with tempfile.TemporaryDirectory(prefix="viewer-big-") as tmp:
        root = Path(tmp)
        publish_tiny_model(root / "artifacts")
        proc, base = start_server(root / "artifacts", env={"DFD_WORK_DIR": str(root / "work")},
                                  threads=args.threads)
        try:
            small_body, small_ctype = multipart(png_bytes(sample_image(0, 64)), "small.png")
            status, warm_s, _ = post(base, path, small_body, small_ctype, args.timeout)
            print(f"checkout {ROOT}; warm-up (loads the model): HTTP {status} in {warm_s:.1f} s", flush=True)
            results = {
                "1 upload": phase(base, proc.pid, 1, body, ctype, path, args.timeout),
                f"{args.concurrency} at once": phase(base, proc.pid, args.concurrency, body, ctype, path,
                                                      args.timeout),
            }
        finally:
            stop_server(proc)

    print(f"\n{args.side}x{args.side} PNG of {len(data) / 1000:.0f} KB, POST {path}, {args.threads} server threads")
    print("(latency of the uploads answered 200; refused ones are listed below the table)")
    print(f"{'phase':<12} {'statuses':<16} {'p50 s':>7} {'max s':>7} {'idle RSS MB':>12} {'peak RSS MB':>12}")
    for name, r in results.items():
        statuses = ", ".join(f"{k}x{v}" for k, v in sorted(r["statuses"].items()))
        print(f"{name:<12} {statuses:<16} {r['p50_s']:>7.2f} {r['max_s']:>7.2f} {r['idle_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb']:>12.0f}")
    for name, r in results.items():
        extra = [f"score(s) {r['scores']}"]
        if r["refused_max_s"] is not None:
            extra.append(f"refused within {r['refused_max_s']:.2f} s, Retry-After {r['retry_after']}")
        if r["errors"] and any(r["errors"]):
            extra.append(f"errors {r['errors']}")
        if not r["peak_reset"]:
            extra.append("peak not reset (clear_refs refused): peak is since start")
        print(f"{name}: " + "; ".join(extra))
    if args.json:
        Path(args.json).write_text(json.dumps({"side": args.side, "png_bytes": len(data), "path": path,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
