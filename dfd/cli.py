"""The console scripts: ``dfd-retrain``, ``dfd-score``, ``dfd-registry``, ``dfd-demo-data`` and ``dfd-viewer``.

Each parses its arguments first, with the standard library, :mod:`dfd.settings` and :mod:`dfd.storage` only,
then checks its inputs, so ``--help``, a mistyped option and a user's error (a missing folder, a bad setting)
answer in about a second at most, with one line and exit status 2. Prefect, TensorFlow and the flows are
imported only after that.

Only ``dfd`` is installed as a package. ``flows``, ``tasks``, ``app`` and ``deployments`` stay in the
repository checkout (generic names that must not land in site-packages; README, "Commands and what gets
installed"): the commands that need them put the checkout's root first on ``sys.path`` of their own process,
which works when ``dfd`` is imported from a checkout (``pip install -e .``, what the Makefile does, or
``python -m`` from the root).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from dfd.settings import ENV_ALIASES, Settings, SettingsError
from dfd.storage import StorageError, open_store


class CheckoutError(RuntimeError):
    """The command needs the repository checkout, and ``dfd`` was not imported from one."""


def checkout_root() -> Path | None:
    """The repository checkout this ``dfd`` was imported from, or ``None`` (a plain ``pip install .``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "flows" / "retrain.py").is_file() and (root / "pyproject.toml").is_file() else None


def use_checkout(command: str) -> Path:
    """Put the checkout's root first on ``sys.path`` so ``flows``, ``tasks`` and ``app`` import from it."""
    root = checkout_root()
    if root is None:
        raise CheckoutError(f"{command} runs from a checkout of the repository (flows/, tasks/ and app/ are not "
                            "installed): install with 'pip install -e .' there, or use its Makefile")
    if sys.path[:1] != [str(root)]:  # first, so a package of the same name elsewhere cannot shadow them
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))
    return root


def _fail(exc: BaseException, code: int = 2) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def _default(field: str) -> str:
    """``(default: $DFD_EPOCHS or 20)``: where a setting left off the command line comes from."""
    env = ENV_ALIASES.get(field, f"DFD_{field.upper()}")
    value = getattr(Settings, field)
    shown = ("on" if value else "off") if isinstance(value, bool) else value
    return f"(default: ${env} or {shown})"


# ---------------------------------------------------------------------------------------------- dfd-retrain


def retrain_parser() -> argparse.ArgumentParser:
    """The options of ``dfd-retrain`` / ``python -m flows.retrain`` (flow parameters of the same names)."""
    p = _parser("dfd-retrain", "Retrain the deepfake detector once and promote the result if it is good enough.")
    p.add_argument("--data", dest="data_url", metavar="DIR|s3://...",
                   help=f"labelled data root with real/ and df/ inside {_default('data_url')}")
    p.add_argument("--artifacts", dest="artifacts_url", metavar="DIR|s3://...",
                   help=f"artifact store: runs, champion pointer {_default('artifacts_url')}")
    p.add_argument("--arch", choices=["patchnet", "patchnet-v1", "seed-cnn", "efficientnet-b0"],
                   help=f"model architecture {_default('arch')}")
    p.add_argument("--epochs", type=int, metavar="N",
                   help=f"most training epochs; early stopping may end sooner {_default('epochs')}")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"training batch size {_default('batch_size')}")
    p.add_argument("--crop-size", type=int, metavar="N",
                   help=f"crop side in pixels, 0 = chosen from the data {_default('crop_size')}")
    p.add_argument("--augment-per-image", type=int, metavar="N",
                   help=f"augmented copies per training image {_default('augment_per_image')}")
    p.add_argument("--seed", type=int, metavar="N", help=f"seed of the split and training {_default('seed')}")
    p.add_argument("--robust-aug", type=float, metavar="P",
                   help=f"probability of each training-time degradation, 0 = off {_default('robust_aug')}")
    p.add_argument("--synthetic-fakes", type=float, metavar="S",
                   help="share of training reals that also yield a synthetic fake, 0 = off; with an empty or "
                        f"missing df/ this is reals-only training {_default('synthetic_fakes')}")
    p.add_argument("--face-crop", action="store_true", default=None,
                   help=f"cut the model's views from the largest detected face {_default('face_crop')}")
    p.add_argument("--scale-aug", type=float, metavar="P",
                   help=f"probability that a training image is first down-scaled, 0 = off {_default('scale_aug')}")
    p.add_argument("--group-by", metavar="folder|none|regex:PATTERN",
                   help="files kept in one split: folder (first subfolder under real/ or df/, e.g. a video), "
                        f"none, or regex:PATTERN {_default('group_by')}")
    p.add_argument("--min-auc", type=float, metavar="A",
                   help="quality floor: the AUC 95%% lower bound a model must beat to be promoted "
                        f"{_default('min_auc')}")
    p.add_argument("--force", action="store_true",
                   help="retrain even if the data and model settings are unchanged (default: off)")
    p.add_argument("--no-demo", action="store_true",
                   help="do not generate the demo data set when the default data folder is empty (default: off)")
    return p


def check_retrain_inputs(settings: Settings) -> None:
    """Refuse, before Prefect starts, what the flow would refuse anyway: unusable storage URLs, a bad
    ``group_by`` pattern, and local data without ``real/`` or ``df/`` folders, with an empty class (same
    messages as the flow, :mod:`dfd.data`) or with fewer image files in a class than ``min_images_per_class``.
    Only names are listed, nothing is decoded. Data on S3 is left to the flow: listing it can take a while."""
    from collections import Counter

    from dfd import data

    data.check_group_by(settings.group_by)
    for url in (settings.data_url, settings.synthetic_url, settings.artifacts_url):
        if not url.startswith("s3://"):
            open_store(url)  # refuses an unsupported URL scheme
    if settings.data_url.startswith("s3://"):
        return
    store = settings.store(settings.data_url)
    optional = ("df",) if settings.synthetic_fakes > 0 else ()
    found, skipped = data.discover(store, optional=optional)
    counts = Counter(label for _, label in found)
    data.check_enough([], skipped, counts, settings.min_images_per_class, store.url,
                      optional=optional + tuple(label for label, n in counts.items() if n))
    for label, n in sorted(counts.items()):  # fewer image files than needed: no decoding can make up for it
        if n < settings.min_images_per_class:
            raise data.DataError(f"class '{label}' in {store.url} has only {n} image files; at least "
                                 f"{settings.min_images_per_class} per class are needed")


def _demo_data_if_empty(settings: Settings) -> None:
    """``make demo`` on a fresh checkout: the default data folder gets the demo set when it has no images."""
    default_data = Settings().data_url
    if settings.data_url != default_data:
        return
    from dfd.demo import DEMO_NOTE, generate_demo, has_images

    if not has_images(default_data):
        counts = generate_demo(default_data)
        print(f"{default_data} had no images: generated a demo set ({counts['real']} real, "
              f"{counts['df']} fake).\nNOTE: {DEMO_NOTE}\n")


def retrain(argv: list[str] | None = None) -> int:
    """``dfd-retrain``: check the inputs, then run the retraining flow once and print its outcome.

    Exit status 0 when the flow finished, 2 for a user's error (options, settings, data), 1 for a failed run.
    """
    args: dict[str, Any] = vars(retrain_parser().parse_args(argv))
    force, no_demo = args.pop("force"), args.pop("no_demo")
    try:
        settings = Settings.from_env(**args)
        if not no_demo:
            _demo_data_if_empty(settings)
        check_retrain_inputs(settings)
        use_checkout("dfd-retrain")
    except (ValueError, StorageError, CheckoutError) as exc:  # DataError and SettingsError are ValueErrors
        return _fail(exc)
    from flows.retrain import run_command

    return run_command(args, force=force)


# ------------------------------------------------------------------------------------------------ dfd-score


def score_parser() -> argparse.ArgumentParser:
    """The options of ``dfd-score`` / ``python -m flows.score_batch``."""
    p = _parser("dfd-score", "Score every image in a folder with the champion deepfake detector.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="folder to score: a local path or s3://bucket/prefix (required unless --inbox)")
    p.add_argument("--model-version", metavar="V", help="model version to use (default: the champion)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"images per inference batch {_default('score_batch_size')}")
    p.add_argument("--inbox", action="store_true",
                   help="score every ready, not yet scored inbox folder instead of PATH (default: off)")
    p.add_argument("--artifacts", metavar="DIR|s3://...", help=f"artifact store {_default('artifacts_url')}")
    p.add_argument("--inbox-url", metavar="DIR|s3://...", help=f"inbox for --inbox {_default('inbox_url')}")
    p.add_argument("--quiet-seconds", type=float, metavar="S",
                   help=f"seconds without change that make an inbox folder ready {_default('quiet_seconds')}")
    p.add_argument("--workers", type=int, metavar="N",
                   help="score on a local Dask cluster of N worker processes, 0 = in this process "
                        f"{_default('score_workers')}")
    p.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                   help="score on the existing Dask cluster of this scheduler (default: $DFD_DASK_ADDRESS or none)")
    p.add_argument("--shard-files", type=int, metavar="N",
                   help=f"files per shard on a Dask cluster {_default('score_shard_files')}")
    return p


def check_score_inputs(args: argparse.Namespace, settings: Settings) -> None:
    """Fail fast, before Prefect or TensorFlow start, on a missing/empty folder or a missing model."""
    from dfd.registry import resolve_version
    from dfd.scoring import ScoringError, check_source

    if args.inbox:
        inbox = settings.store(settings.inbox_url)
        if inbox.folder_problem(""):
            raise ScoringError(f"inbox folder {inbox.url} does not exist")
        return
    check_source(settings.store(args.path), marker=settings.ready_marker)
    resolve_version(settings.store(settings.artifacts_url), args.model_version)


def score(argv: list[str] | None = None) -> int:
    """``dfd-score``: check the folder and the model, then run the ``score-folder`` (or ``score-inbox``) flow once.

    Exit status 0 when scored, 2 for a user's error (options, folder, model), 1 for a failed run."""
    parser = score_parser()
    args = parser.parse_args(argv)
    if bool(args.path) == bool(args.inbox):
        parser.error("give either a PATH or --inbox")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    from dfd.registry import RegistryError
    from dfd.scoring import ScoringError

    try:
        settings = Settings.from_env(artifacts_url=args.artifacts, inbox_url=args.inbox_url,
                                     quiet_seconds=args.quiet_seconds, score_workers=args.workers,
                                     dask_address=args.dask_address, score_shard_files=args.shard_files)
        check_score_inputs(args, settings)
        use_checkout("dfd-score")
    except (ScoringError, RegistryError, StorageError, SettingsError, CheckoutError) as exc:
        return _fail(exc)
    from flows.score_batch import run_command

    return run_command(args, settings)


# ------------------------------------------------------------------------------ dfd-registry, dfd-demo-data


def registry_parser() -> argparse.ArgumentParser:
    """The options of ``dfd-registry`` (the command itself is :func:`dfd.registry.main`)."""
    p = _parser("dfd-registry", "The model registry: list versions, show the champion, or roll back.")
    p.add_argument("--artifacts", metavar="DIR|s3://...", help=f"artifact store {_default('artifacts_url')}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{list,champion,rollback}")
    kw: dict[str, Any] = {"allow_abbrev": False}
    sub.add_parser("list", help="list published versions, newest first", **kw)
    sub.add_parser("champion", help="show the champion pointer", **kw)
    rb = sub.add_parser("rollback", help="point the champion at the previous (or a given) version", **kw)
    rb.add_argument("--to", metavar="VERSION", help="version to roll back to (default: the previous champion)")
    return p


def registry(argv: list[str] | None = None) -> int:
    """``dfd-registry``: refuse unknown or abbreviated options and show every default, then run the command."""
    argv = sys.argv[1:] if argv is None else argv
    registry_parser().parse_args(argv)
    from dfd.registry import main

    return main(argv)


def demo_parser() -> argparse.ArgumentParser:
    """The options of ``dfd-demo-data`` (the command itself is :func:`dfd.demo.main`)."""
    p = _parser("dfd-demo-data", "Generate the offline demo data set (NOT a deepfake benchmark, see README).")
    p.add_argument("root", nargs="?", default="data/sample_data", metavar="ROOT",
                   help="folder that gets real/ and df/ (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=300, metavar="N", help="images per class (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="generate even if the folder has images (default: off)")
    return p


def demo_data(argv: list[str] | None = None) -> int:
    """``dfd-demo-data``: refuse unknown or abbreviated options and show every default, then generate."""
    argv = sys.argv[1:] if argv is None else argv
    demo_parser().parse_args(argv)
    from dfd.demo import main

    return main(argv)


# ----------------------------------------------------------------------------------------------- dfd-viewer


def viewer(argv: list[str] | None = None) -> int:
    """``dfd-viewer``: serve the viewer under waitress, as ``make viewer`` / ``python -m app`` do."""
    try:
        use_checkout("dfd-viewer")
    except CheckoutError as exc:
        return _fail(exc)
    from app.serve import main

    return main(argv, prog="dfd-viewer")

