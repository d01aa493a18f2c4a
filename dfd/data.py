"""Data stage: discover labelled images, decode each safely, quarantine what cannot be used, group
duplicates and related files, and make a stratified, group-aware split with a fixed seed.

The data root holds ``real/`` and ``df/`` (deepfake) folders, searched recursively. The user's files are
only ever read.

Groups never straddle splits. A group is the union of

* exact and near duplicates (perceptual hash within ``near_duplicate_distance`` bits), and
* files that share a *named group* (see :func:`named_group`). By default (``group_by="folder"``) that is the
  first subfolder under ``real/`` or ``df/``: frames of one video, photos of one person or one shoot are
  near-copies that a perceptual hash does not always catch, and a split that puts them on both sides measures
  memory, not detection. Files directly in ``real/`` or ``df/`` have no name. ``group_by="none"`` turns the
  rule off; ``group_by="regex:PATTERN"`` names the group by the pattern's first capture group (or whole
  match) searched in the path below the class folder, for layouts that keep the group in the file name.

Since the two rules are unioned, a fake video's frames join the group of the real video they were made from
whenever any pair of frames is a near duplicate (a face swap leaves the rest of the frame untouched).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dfd import csvsafe
from dfd.imageio import ImageError, decode_image, has_image_extension, read_input
from dfd.storage import ObjectInfo, StorageError, Store

LABELS = {"real": 0, "df": 1}  # folder name -> model target (1 = deepfake)
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The data set cannot be used; the message says what was found and what is needed."""


@dataclass
class Item:
    """One usable image."""

    key: str
    label: str
    sha256: str
    phash: int
    width: int
    height: int
    bytes: int
    group: int = -1
    split: str = ""

    @property
    def y(self) -> int:
        return LABELS[self.label]


@dataclass
class Quarantined:
    key: str
    label: str
    reason: str
    detail: str = ""


@dataclass
class ValidationResult:
    items: list[Item]
    quarantine: list[Quarantined]
    found: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Usable images per split and class (class named 'real' / 'deepfake')."""
        out: dict[str, dict[str, int]] = {s: {"real": 0, "deepfake": 0} for s in SPLITS}
        for it in self.items:
            if it.split:
                out[it.split]["real" if it.y == 0 else "deepfake"] += 1
        return out


# Told whenever df/ is missing or empty: reals-only training is possible (README "Reals-only training").
FAKES_HINT = ("; or set synthetic_fakes > 0 (--synthetic-fakes 1.0 on the command line) to train on reals plus "
              "fakes made from them")


def discover(store: Store, optional: tuple[str, ...] = ()) -> tuple[list[tuple[ObjectInfo, str]], list[Quarantined]]:
    """Files under ``real/`` and ``df/``: (object, label) for image extensions, quarantine for the rest.
    A class folder named in ``optional`` may be missing (an S3 prefix cannot exist empty)."""
    dirs = set(store.list_dirs(""))
    if not dirs and not any(True for _ in store.list("")):
        raise DataError(f"data folder not found or empty: {store.url} (expected real/ and df/ inside it)")
    missing = [name for name in LABELS if name not in dirs and name not in optional]
    if missing:
        raise DataError(
            f"data folder {store.url} has no {' or '.join(m + '/' for m in missing)} folder "
            f"(expected real/ and df/, where df holds the deepfakes){FAKES_HINT if missing == ['df'] else ''}"
        )
    found: list[tuple[ObjectInfo, str]] = []
    skipped: list[Quarantined] = []
    for label in LABELS:
        for obj in store.list(label):
            name = obj.key.rsplit("/", 1)[-1]
            if name.startswith(".") or name in ("_READY", "README.txt"):
                continue
            if has_image_extension(name):
                found.append((obj, label))
            else:
                skipped.append(Quarantined(obj.key, label, "not an image", "unsupported file extension"))
    return found, skipped


def perceptual_hash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash, ``imagehash.phash``, as an int (its hex string, as the manifest stores it):
    robust to re-encoding and small resizes, for near-duplicate grouping by Hamming distance."""
    import imagehash  # only the data stage needs it

    return int(str(imagehash.phash(Image.fromarray(pixels), hash_size=8)), 16)


def inspect(store: Store, obj: ObjectInfo, label: str, max_pixels: int, max_bytes: int) -> Item | Quarantined:
    """Read and decode one file; never raises for a bad file.

    The file is read by :func:`dfd.imageio.read_input`, as batch scoring reads it, so a special file (a FIFO,
    a device, a broken or looping link) is set aside with the same reason as scoring gives it
    (``unreadable: not a regular file``, ...), an empty regular file as ``zero bytes`` and one over
    ``max_bytes`` as ``file too large`` (before a byte is read)."""
    try:
        data = read_input(store, obj, max_bytes)
        decoded = decode_image(data, max_pixels)
    except ImageError as exc:
        return Quarantined(obj.key, label, exc.reason, exc.detail)
    except StorageError as exc:
        return Quarantined(obj.key, label, "unreadable", str(exc))
    return Item(
        key=obj.key,
        label=label,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=perceptual_hash(decoded.pixels),
        width=int(decoded.pixels.shape[1]),
        height=int(decoded.pixels.shape[0]),
        bytes=len(data),
    )


def validate(
    store: Store,
    *,
    max_pixels: int,
    max_bytes: int,
    min_per_class: int,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 4,
    fakes_optional: bool = False,
) -> ValidationResult:
    """Inspect every candidate file, drop exact duplicates, and check there is enough data per class.

    With ``fakes_optional`` (synthetic fakes will be made from the reals) an empty ``df/`` is accepted."""
    candidates, quarantine = discover(store, optional=("df",) if fakes_optional else ())
    found = Counter(label for _, label in candidates)
    items: list[Item] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda c: inspect(store, c[0], c[1], max_pixels, max_bytes), candidates)
        for i, res in enumerate(results, 1):
            (items if isinstance(res, Item) else quarantine).append(res)
            if progress and (i % 500 == 0 or i == len(candidates)):
                progress(i, len(candidates))
    items, dup_quarantine = drop_exact_duplicates(items)
    quarantine.extend(dup_quarantine)
    check_enough(items, quarantine, found, min_per_class, store.url,
                 optional=("df",) if fakes_optional and not any(it.label == "df" for it in items) else ())
    return ValidationResult(items=items, quarantine=quarantine, found=dict(found))


def drop_exact_duplicates(items: list[Item]) -> tuple[list[Item], list[Quarantined]]:
    """Keep one file per content hash. Content present in both classes is a labelling conflict: all copies
    are set aside, since no label can be trusted."""
    by_hash: dict[str, list[Item]] = defaultdict(list)
    for it in sorted(items, key=lambda i: i.key):
        by_hash[it.sha256].append(it)
    kept: list[Item] = []
    dropped: list[Quarantined] = []
    for copies in by_hash.values():
        labels = {c.label for c in copies}
        if len(labels) > 1:
            others = ", ".join(c.key for c in copies)
            dropped.extend(Quarantined(c.key, c.label, "conflicting labels", f"same content as {others}")
                           for c in copies)
            continue
        kept.append(copies[0])
        dropped.extend(Quarantined(c.key, c.label, "duplicate", f"same content as {copies[0].key}")
                       for c in copies[1:])
    kept.sort(key=lambda i: i.key)
    return kept, dropped


def check_enough(items: list[Item], quarantine: list[Quarantined], found: Counter, min_per_class: int,
                 where: str, optional: tuple[str, ...] = ()) -> None:
    usable = Counter(it.label for it in items)
    for label in LABELS:
        if usable[label] >= min_per_class or label in optional:
            continue
        bad = [q for q in quarantine if q.label == label]
        reasons = Counter(q.reason for q in bad)
        why = "; ".join(f"{n} {r}" for r, n in reasons.most_common(4))
        head = f"class '{label}' in {where}"
        if found[label] == 0 and not bad:
            hint = FAKES_HINT if label == "df" else ""
            raise DataError(f"{head} is empty: put images in {label}/ (jpg, png, bmp, webp, tiff or gif){hint}")
        raise DataError(
            f"{head} has only {usable[label]} usable images; at least {min_per_class} per class are needed "
            f"(found {found[label]} image files, {len(bad)} set aside{': ' + why if why else ''})"
        )


GROUP_BY_HELP = "folder (first subfolder under real/ or df/), none, or regex:PATTERN"


def check_group_by(group_by: str) -> None:
    """Refuse a ``group_by`` value that cannot be used, naming the choices."""
    if group_by in ("folder", "none"):
        return
    if not group_by.startswith("regex:"):
        raise DataError(f"group_by must be {GROUP_BY_HELP}; got {group_by!r}")
    try:
        re.compile(group_by[len("regex:"):])
    except re.error as exc:
        raise DataError(f"group_by regex {group_by[len('regex:'):]!r} is not valid: {exc}") from None


def named_group(key: str, group_by: str) -> str:
    """The named group of a file (``""`` for none; see the module docstring). ``key`` is ``<class>/<path>``."""
    label, _, rest = key.partition("/")
    if group_by == "folder":
        return f"{label}/{rest.split('/', 1)[0]}" if "/" in rest else ""
    if group_by.startswith("regex:"):
        m = re.search(group_by[len("regex:"):], rest)
        if m:
            return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
    return ""


def group_near_duplicates(items: Iterable[Item], max_distance: int, group_by: str = "none") -> list[int]:
    """Union exact and near duplicates (perceptual-hash Hamming distance <= max_distance), and files of the
    same named group (see :func:`named_group`), into groups.

    Candidate pairs come from splitting the 64-bit hash into ``max_distance + 1`` bands: by the pigeonhole
    principle two hashes within the distance agree exactly on at least one band, so no pair is missed and
    the cost stays near-linear.
    """
    items = list(items)
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_sha: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.sha256 in by_sha:
            union(i, by_sha[it.sha256])
        by_sha.setdefault(it.sha256, i)
        name = named_group(it.key, group_by) if group_by != "none" else ""
        if name:
            if name in by_name:
                union(i, by_name[name])
            by_name.setdefault(name, i)
    hashes = [it.phash for it in items]
    n_bands = max_distance + 1
    edges = [int(e) for e in np.linspace(0, 64, n_bands + 1)]  # Python ints: a 64-bit hash overflows int64
    for b in range(n_bands):
        width = edges[b + 1] - edges[b]
        mask = (1 << width) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> edges[b]) & mask].append(i)
        for members in buckets.values():
            if len(members) < 2 or len(members) > 2000:
                continue  # a huge bucket means a flat band (e.g. blank images); the other bands decide
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if bin(hashes[i] ^ hashes[j]).count("1") <= max_distance:
                        union(i, j)
    roots = [find(i) for i in range(len(items))]
    renumber = {r: g for g, r in enumerate(dict.fromkeys(roots))}
    return [renumber[r] for r in roots]


def split_groups(items: list[Item], groups: list[int], val_fraction: float, test_fraction: float,
                 seed: int) -> list[str]:
    """Assign whole groups to train/val/test, stratified by class, deterministic for a seed.

    Groups are placed largest first (random order among equals); each goes to the split whose per-class
    quota it helps fill most. Every split gets at least one image of each class when possible.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    totals = Counter(items[i].y for i in range(len(items)))
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    target = {s: {c: max(1.0, fractions[s] * totals[c]) for c in (0, 1)} for s in SPLITS}
    current = {s: {0: 0, 1: 0} for s in SPLITS}
    rng = np.random.default_rng(seed)
    order = list(members)
    rng.shuffle(order)
    order.sort(key=lambda g: -len(members[g]))
    out = [""] * len(items)
    for g in order:
        comp = Counter(items[i].y for i in members[g])

        def need(s: str, comp: Counter = comp) -> float:
            return sum(n * (target[s][c] - current[s][c]) / target[s][c] for c, n in comp.items())

        best = max(SPLITS, key=need)
        for i in members[g]:
            out[i] = best
            current[best][items[i].y] += 1
    return out


def assign_splits(result: ValidationResult, *, near_distance: int, val_fraction: float,
                  test_fraction: float, seed: int, group_by: str = "folder") -> None:
    """Group duplicates and related files and split, in place, then check every split has both classes (only
    reals when the data has no fakes at all: they are then synthesised per split)."""
    check_group_by(group_by)
    groups = group_near_duplicates(result.items, near_distance, group_by)
    splits = split_groups(result.items, groups, val_fraction, test_fraction, seed)
    for it, g, s in zip(result.items, groups, splits, strict=True):
        it.group, it.split = g, s
    counts = result.counts()
    reals_only = not any(it.label == "df" for it in result.items)
    for s in SPLITS:
        for cls, n in counts[s].items():
            if n == 0 and not (reals_only and cls == "deepfake"):
                raise DataError(
                    f"the {s} split has no '{cls}' images: groups are too few or too large for this data set "
                    f"({len(set(groups))} groups for {len(groups)} images, grouped by near duplicates and "
                    f"group_by={group_by!r}); add more distinct images or videos, or set group_by to 'none' "
                    "if the subfolders are not videos or people"
                )


def groups_per_split(items: Iterable[Item]) -> dict[str, int]:
    """How many distinct groups each split holds (the split report)."""
    seen: dict[str, set[int]] = {s: set() for s in SPLITS}
    for it in items:
        if it.split:
            seen[it.split].add(it.group)
    return {s: len(g) for s, g in seen.items()}


def multi_member_groups(items: Iterable[Item]) -> int:
    """Groups with two or more files (duplicates, frames of one video...); singletons are not groups."""
    return sum(1 for n in Counter(it.group for it in items).values() if n >= 2)


def fingerprint(items: Iterable[Item]) -> str:
    """Content fingerprint of the usable data: a hash of every (label, sha256), independent of file names."""
    h = hashlib.sha256()
    for line in sorted(f"{it.label} {it.sha256}" for it in items):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


MANIFEST_FIELDS = ["key", "label", "split", "group", "sha256", "phash", "width", "height", "bytes"]


def write_manifest(items: Iterable[Item], path: str | Path) -> None:
    """The split manifest as UTF-8 CSV (one row per usable image).

    Keys are store keys, which are always text (a name that is not UTF-8 is escaped, see
    :mod:`dfd.storage`); cells that a spreadsheet would run as a formula get a leading quote
    (:mod:`dfd.csvsafe`). :func:`read_manifest` gives back the exact keys."""
    buf = io.StringIO()
    writer = csvsafe.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    for it in items:
        row = {k: v for k, v in asdict(it).items() if k in MANIFEST_FIELDS}
        row["phash"] = f"{it.phash:016x}"
        writer.writerow(row)
    Path(path).write_text(buf.getvalue(), encoding="utf-8")


def read_manifest(path: str | Path) -> list[Item]:
    """The items of a manifest written by :func:`write_manifest`, with their original keys."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            Item(key=r["key"], label=r["label"], sha256=r["sha256"], phash=int(r["phash"], 16),
                 width=int(r["width"]), height=int(r["height"]), bytes=int(r["bytes"]),
                 group=int(r["group"]), split=r["split"])
            for r in map(csvsafe.restore_row, csv.DictReader(fh))
        ]


def quarantine_report(quarantine: list[Quarantined]) -> dict:
    """JSON-able report: counts by reason, then every file with its reason."""
    return {
        "count": len(quarantine),
        "by_reason": dict(Counter(q.reason for q in quarantine).most_common()),
        "files": [asdict(q) for q in sorted(quarantine, key=lambda q: q.key)],
    }
