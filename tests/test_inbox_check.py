"""The inbox watch (flows/inbox_check.py) under the temporary Prefect API: an idle check imports neither Prefect
nor TensorFlow and creates no flow run; a due folder starts exactly one run of the scoring deployment, and a
second check while that run waits starts no other. (A worker running the started run: test_deployments.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from helpers import make_dataset

ROOT = Path(__file__).resolve().parents[1]


def _scoring_deployment() -> tuple[str, object]:
    """A fresh deployment of the score-inbox flow (own name: runs of other tests do not count); (name, id)."""
    from prefect.client.orchestration import get_client

    name = f"test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("score-inbox")
        deployment_id = client.create_deployment(flow_id=flow_id, name=name,
                                                 entrypoint="flows/score_batch.py:score_inbox")
    return f"score-inbox/{name}", deployment_id


def _runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _idle_inbox(root: Path) -> tuple[Path, Path]:
    """An inbox where nothing is due: a folder scored as it is (its summary's fingerprint matches), one still
    being copied (fresh, no marker) and an empty one. Returns (inbox, artifact store)."""
    from dfd.layout import SUMMARY_JSON
    from dfd.scoring import results_prefix, scan_folder
    from dfd.storage import open_store

    inbox, artifacts = root / "inbox", root / "artifacts"
    make_dataset(inbox / "scored", per_class=1, size=24)
    (inbox / "scored" / "_READY").write_text("")
    make_dataset(inbox / "copying", per_class=1, size=24)
    (inbox / "empty").mkdir()
    fingerprint = scan_folder(open_store(inbox / "scored")).fingerprint
    summary = artifacts / results_prefix("scored") / SUMMARY_JSON
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"input_fingerprint": fingerprint}))
    return inbox, artifacts


def _all_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(limit=200))


def test_idle_check_imports_neither_prefect_nor_tensorflow_and_runs_nothing(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    name, deployment_id = _scoring_deployment()
    inbox, artifacts = _idle_inbox(tmp_path)
    runs_before = _all_runs()
    code = (
        "import sys\n"
        "from flows.inbox_check import main\n"
        f"status = main(['--inbox-url', {str(inbox)!r}, '--artifacts', {str(artifacts)!r}, '--quiet-seconds',"
        f" '3600', '--deployment', {name!r}])\n"
        "heavy = sorted(m for m in ('prefect', 'tensorflow', 'keras', 'dfd.model') if m in sys.modules)\n"
        "print('HEAVY', status, ','.join(heavy))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["HEAVY 0 "], proc.stdout  # nothing said, nothing heavy imported
    assert _runs_of(deployment_id) == [] and _all_runs() == runs_before  # no flow run of any flow


def test_due_folder_starts_one_scoring_run(prefect_api, tmp_path):
    from dfd.settings import Settings
    from flows.inbox_check import check_once

    name, deployment_id = _scoring_deployment()
    inbox, artifacts = _idle_inbox(tmp_path)
    make_dataset(inbox / "new batch", per_class=1, size=24)
    (inbox / "new batch" / "_READY").write_text("")
    settings = Settings.from_env(inbox_url=str(inbox), artifacts_url=str(artifacts), quiet_seconds=3600)
    parameters = {"inbox_url": str(inbox), "artifacts_url": str(artifacts)}
    said: list[str] = []
    first = check_once(settings, name, parameters, say=said.append)
    assert first["due"] == ["new batch"] and first["waiting"] is None
    (run,) = _runs_of(deployment_id)
    assert str(run.id) == first["started"] and said == [f"due: new batch; started {run.name} ({name})"]
    assert run.parameters == parameters  # the watch's locations are passed on to the scoring run
    assert run.state.is_scheduled()  # waiting for a worker

    second = check_once(settings, name, parameters, say=said.append)  # still due, but that run will score it
    assert second == {"due": ["new batch"], "started": None, "waiting": str(run.id)}
    assert len(_runs_of(deployment_id)) == 1 and "already waiting or running" in said[-1]


def test_watch_survives_a_failed_check_and_checks_again(tmp_path, monkeypatch, capsys):
    """``--every``: a check that fails (here: the inbox is gone) is reported in one line and tried again at the
    next tick; a single check that fails exits with status 1."""
    import flows.inbox_check as watch

    ticks: list[float] = []

    def sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(watch, "due_folders", lambda settings: (_ for _ in ()).throw(OSError("inbox unreachable")))
    args = ["--inbox-url", str(tmp_path / "gone"), "--artifacts", str(tmp_path / "a")]
    try:
        watch.main([*args, "--every", "7"], sleep=sleep)
    except KeyboardInterrupt:
        pass
    assert ticks == [7.0, 7.0]
    assert watch.main(args) == 1
    assert capsys.readouterr().err.splitlines() == ["inbox check failed: OSError: inbox unreachable"] * 3
