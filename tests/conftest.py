"""Test-wide set-up: Prefect offline and on a temporary API, TensorFlow quiet, fixtures for tiny data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

pytest_plugins = ["s3server"]  # SeaweedFS fixtures: s3_server, s3_env, s3_restartable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session (started only by tests that run flows)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    from helpers import make_dataset

    return make_dataset(tmp_path / "data", per_class=12, size=48)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny published champion: (artifact store root, its predictor, its version)."""
    from helpers import publish_tiny_model

    from dfd.scoring import load_predictor
    from dfd.storage import open_store

    root = tmp_path_factory.mktemp("artifacts")
    publish_tiny_model(root)
    predictor, version = load_predictor(open_store(root), None)
    return root, predictor, version
