"""What a person reads about a batch: the progress line while it runs and the summary at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dfd import registry
from dfd.layout import METADATA_FILE, caveat_needs_run, model_caveat, run_key
from dfd.storage import StorageError, Store


@dataclass
class Progress:
    """Files done out of ``total``, with the rate and the time left."""

    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    last_log: float = 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = fmt_seconds(left) if left != float("inf") else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} files ({pct:.0f}%), {rate:.1f} files/s, ETA {eta}"

    def due(self, every: float) -> bool:
        """True (and the clock restarted) when the last progress line is at least ``every`` seconds old."""
        if time.monotonic() - self.last_log < every:
            return False
        self.last_log = time.monotonic()
        return True


def fmt_seconds(s: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run summary (several lines)."""
    c = summary["counts"]
    lines = [
        f"batch {summary['batch_id']}: {summary['files']} files, {summary['scored']} scored "
        f"(real {c['real']}, deepfake {c['deepfake']}), {summary['errors']} errors",
    ]
    if summary["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors_by_reason"].items()))
    rate = summary.get("files_per_s")
    lines.append(
        f"  model {summary['model_version']} (threshold {summary['threshold']:.4g}); scored now "
        f"{summary['scored_this_run']}, reused {summary['reused_this_run']}; {summary['duration_s']:.1f}s"
        + (f", {rate:.1f} files/s" if rate else "")
    )
    lines.append(f"  results: {summary['results']['csv']}")
    lines.append(f"           {summary['results']['jsonl']}")
    lines.append(f"           {summary['results']['summary']}")
    caveat = summary.get("model_caveat")
    if caveat:  # last, where the eye lands: what these verdicts are worth
        lines.append(f"  WARNING: {caveat['message']}")
        lines.append(f"           {caveat['hint']}")
    return "\n".join(lines)


def caveat_of(artifacts: Store, version: str) -> dict[str, str] | None:
    """The caveat on the verdicts of published model ``version`` (:func:`dfd.layout.model_caveat`), for
    ``summary.json``: from its metadata sidecar in ``artifacts``, and from its ``run.json`` when the metadata
    predates the flags. ``None`` when the model is not published there (nothing says what it was trained on)."""
    try:
        metadata = artifacts.read_json(run_key(version, METADATA_FILE))
        metadata = metadata if isinstance(metadata, dict) else {}
        run = registry.read_run(artifacts, version) if caveat_needs_run(metadata) else None
    except (registry.RegistryError, StorageError, ValueError):
        return None
    return model_caveat(metadata, run)
