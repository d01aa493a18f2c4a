"""Bad input never stops a batch: every kind of broken or odd file is either scored or listed with a reason."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image

from dfd.demo import synthetic_photo
from dfd.scoring import score_folder
from dfd.storage import LocalStore, StorageError, Store

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def jpeg(pixels: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bomb(side: int = 50_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side x side pixels (2.5 gigapixels) in ~0.3 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def build_corpus(root: Path) -> dict[str, str | None]:
    """Write the corpus; returns {relative path: expected error reason, or None when it must be scored}."""
    rng = np.random.default_rng(3)
    photo = synthetic_photo(rng, 64)
    expect: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[name] = reason
        return path

    put("ok.jpg", jpeg(photo), None)
    put("zero-bytes.jpg", b"", "zero bytes")
    full = jpeg(synthetic_photo(rng, 96))
    put("truncated.jpg", full[: len(full) // 2], "truncated")
    put("text-named.jpg", b"this is not an image, just text\n" * 4, "not an image")
    put("notes.txt", b"a stray text file\n", "not an image")
    put("bomb.png", png_bomb(), "too large")
    big = np.asarray(Image.fromarray(photo).resize((6000, 4000), Image.Resampling.BILINEAR))
    put("huge valid 6000x4000.jpg", jpeg(big), None)  # 24 megapixels: big but within the limit
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    put("cmyk.jpg", cmyk.getvalue(), None)
    deep = (photo[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    buf16 = io.BytesIO()
    Image.fromarray(deep).save(buf16, format="PNG")  # 16-bit grayscale PNG
    put("sixteen-bit.png", buf16.getvalue(), None)
    frames = [Image.fromarray(synthetic_photo(rng, 48)) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", gif.getvalue(), None)
    put("grayscale.png", png_bytes(photo[..., 1]), None)
    upright = synthetic_photo(rng, 40)[:, :30]  # 40 tall, 30 wide
    put("upright.png", png_bytes(upright), None)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are the upright ones turned CCW
    rotated = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(rotated, format="PNG", exif=exif)
    put("exif-rotated.png", rotated.getvalue(), None)
    put("ünïcödé 名前.jpg", jpeg(photo[::-1]), None)
    put("sub folder/name with  spaces.png", png_bytes(photo[:, ::-1]), None)
    put(".DS_Store", b"junk", "IGNORED")

    os.symlink("loop.jpg", root / "loop.jpg")  # a link to itself
    expect["loop.jpg"] = "unreadable"
    os.symlink("..", root / "sub folder" / "back-up")  # a folder loop: never followed, no row
    outside = root.parent / "outside-secret.jpg"
    outside.write_bytes(jpeg(photo))
    os.symlink(outside, root / "link-outside.jpg")
    expect["link-outside.jpg"] = "unreadable"
    os.mkfifo(root / "fifo.jpg")  # reading would block forever
    expect["fifo.jpg"] = "unreadable"
    noperm = put("no-permission.jpg", jpeg(photo), None if IS_ROOT else "unreadable")
    noperm.chmod(0)
    return expect


def rows_by_path(summary: dict) -> dict[str, dict]:
    lines = Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len({r["path"] for r in rows}) == len(rows)
    return {r["path"]: r for r in rows}


def test_bad_file_corpus_never_stops_the_batch(tmp_path, champion):
    root, predictor, version = champion
    folder = tmp_path / "batch"
    folder.mkdir()
    expect = build_corpus(folder)
    try:
        summary = score_folder(str(folder), str(root), predictor, version, batch_size=4, progress_every=0)
    finally:
        (folder / "no-permission.jpg").chmod(0o644)
    rows = rows_by_path(summary)
    listed = {k for k, v in expect.items() if v != "IGNORED"}
    assert set(rows) == listed  # one row per file; hidden files and the folder loop give none
    for name in sorted(listed):
        row, reason = rows[name], expect[name]
        if reason is None:
            assert row["error"] == "", f"{name}: {row['error']}"
            assert row["label"] in ("real", "deepfake") and 0.0 <= row["score"] <= 1.0, name
        else:
            assert row["error"].split(":")[0] == reason, f"{name}: {row['error']!r}"
            assert row["score"] is None and row["label"] == "", name
    assert "symlink loop" in rows["loop.jpg"]["error"]
    assert "not a regular file" in rows["fifo.jpg"]["error"]
    assert "outside the folder" in rows["link-outside.jpg"]["error"]
    assert rows["bomb.png"]["error"].startswith("too large")  # refused from the header, pixels never decoded
    assert rows["huge valid 6000x4000.jpg"]["width"] == 6000
    # EXIF orientation is applied before the views are cut: same pixels, same score; size as stored.
    assert rows["exif-rotated.png"]["score"] == pytest.approx(rows["upright.png"]["score"], abs=1e-6)
    assert (rows["exif-rotated.png"]["width"], rows["exif-rotated.png"]["height"]) == (40, 30)
    if IS_ROOT:
        # chmod 000 cannot stop root from reading, so the file is scored; the FIFO above is the real
        # "cannot be read" case here, and the next test covers a permission error from the storage layer.
        assert rows["no-permission.jpg"]["error"] == ""
    else:
        assert "permission denied" in rows["no-permission.jpg"]["error"]
    errors = summary["errors_by_reason"]
    assert summary["errors"] == sum(errors.values()) == sum(1 for v in expect.values() if v not in (None, "IGNORED"))
    assert summary["ignored_files"] == 1

    # Unreadable files are retried on the next run; content errors come from the ledger.
    again = score_folder(str(folder), str(root), predictor, version, batch_size=4, progress_every=0)
    assert again["scored_this_run"] == 0 and again["errors_by_reason"] == errors
    assert again["checked_this_run"] == sum(1 for v in expect.values() if v == "unreadable")


def test_permission_denied_from_storage_is_listed(tmp_path, champion):
    """A read that fails with EACCES (simulated at the store, since root can read a chmod 000 file)."""
    root, predictor, version = champion
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "fine.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(1), 40)))
    (folder / "locked.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(2), 40)))

    class Denying(LocalStore):
        def open_local(self, key):  # what os.open raises for a chmod 000 file when not root
            if key == "locked.png":
                raise PermissionError(errno.EACCES, "Permission denied", str(self.root / key))
            return super().open_local(key)

    summary = score_folder(Denying(folder), str(root), predictor, version, batch_size=2, progress_every=0)
    rows = rows_by_path(summary)
    assert rows["locked.png"]["error"] == "unreadable: permission denied"
    assert rows["fine.png"]["error"] == "" and summary["errors_by_reason"] == {"unreadable": 1}


def test_file_over_the_size_limit_is_not_read(tmp_path, champion):
    root, predictor, version = champion
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "small.png").write_bytes(png_bytes(np.zeros((20, 20, 3), np.uint8)))
    (folder / "big.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(0), 200)))
    summary = score_folder(str(folder), str(root), predictor, version, max_file_bytes=5_000, progress_every=0)
    rows = rows_by_path(summary)
    assert rows["big.png"]["error"].startswith("file too large:")
    assert rows["small.png"]["error"] == ""


def test_a_store_outage_fails_the_run_instead_of_publishing_errors(tmp_path, champion):
    """Reads that fail because the store itself is gone (its listing fails too) are not 'bad files'."""
    from dfd.scoring import ScoringError, batch_id_for, results_prefix

    root, predictor, version = champion
    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(i), 40)))
    state = {"down": False}

    class Outage(LocalStore):
        def read_limited(self, key, max_bytes):  # read through read_bytes, as from a remote store
            return Store.read_limited(self, key, max_bytes)

        def read_bytes(self, key):
            if key >= "3.png":
                state["down"] = True
            if state["down"]:
                raise StorageError(f"cannot reach S3 endpoint (for {self.describe(key)})")
            return super().read_bytes(key)

        def list(self, prefix=""):
            if state["down"]:
                raise StorageError("cannot reach S3 endpoint")
            return super().list(prefix)

    with pytest.raises(ScoringError, match="no results were written"):
        score_folder(Outage(folder), str(root), predictor, version, batch_size=2, progress_every=0)
    prefix = Path(root) / results_prefix(batch_id_for(str(folder)))
    assert not (prefix / "results.csv").exists() and not (prefix / "summary.json").exists()
    again = score_folder(str(folder), str(root), predictor, version, batch_size=2, progress_every=0)
    assert again["errors"] == 0 and again["files"] == 6
