"""End to end on a real Prefect server: deploy from the real prefect.yaml, run both deployments with a worker.

One module-scoped server (own PREFECT_HOME, free loopback port), the work pool and the deployments made by
the same helpers the local stack uses. Runs are triggered through the API and executed by
``prefect worker start --run-once`` processes, exactly as the stack's worker would run them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from deployments.config import REPO_ROOT, ConfigError, file_defaults, schedule_settings
from deployments.deploy import PREFECT, deploy_all, ensure_work_pool, offline_env, patched_prefect_file, wait_healthy
from deployments.stack import alive, read_state

pytestmark = pytest.mark.slow

POOL = "dfd-test-pool"
RETRAIN = "retrain/retrain-nightly"
SCORE = "score-inbox/score-inbox"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schedule_settings_defaults_and_overrides():
    assert schedule_settings({}) == {"retrain_cron": "0 2 * * *", "timezone": "UTC", "inbox_interval": 300}
    custom = {"RETRAIN_CRON": "30 3 * * 1-5", "RETRAIN_TIMEZONE": "Europe/Paris", "SCORE_INBOX_INTERVAL": "60"}
    assert schedule_settings(custom) == {"retrain_cron": "30 3 * * 1-5", "timezone": "Europe/Paris",
                                         "inbox_interval": 60}
    for bad in ({"RETRAIN_CRON": "every night"}, {"RETRAIN_TIMEZONE": "Mars/Olympus"},
                {"SCORE_INBOX_INTERVAL": "5m"}, {"SCORE_INBOX_INTERVAL": "2"}):
        with pytest.raises(ConfigError):
            schedule_settings(bad)


def test_defaults_are_read_from_prefect_yaml_only(tmp_path):
    """The deployment defaults live once, in prefect.yaml; the schedule and pool there use the same values."""
    defaults = file_defaults()
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert [d["work_pool"]["name"] for d in spec["deployments"]] == [defaults["work_pool"]] * 2
    assert spec["deployments"][1]["schedules"][0]["interval"] == defaults["inbox_interval"]
    other = tmp_path / "prefect.yaml"
    other.write_text(yaml.safe_dump({"definitions": {"defaults": {**defaults, "inbox_interval": 90}}}))
    assert file_defaults(other)["inbox_interval"] == 90
    other.write_text(yaml.safe_dump({"definitions": {"defaults": {"timezone": "UTC"}}}))
    with pytest.raises(ValueError, match="lacks"):
        file_defaults(other)


def test_patched_prefect_file_changes_only_pool_and_interval(tmp_path):
    source = REPO_ROOT / "prefect.yaml"
    patched = yaml.safe_load(patched_prefect_file(source, tmp_path / "p.yaml", 45, "other-pool").read_text())
    original = yaml.safe_load(source.read_text())
    assert [d["work_pool"]["name"] for d in patched["deployments"]] == ["other-pool", "other-pool"]
    assert patched["deployments"][1]["schedules"][0]["interval"] == 45
    assert patched["deployments"][0]["schedules"] == original["deployments"][0]["schedules"]
    for d in patched["deployments"]:
        d["work_pool"]["name"] = "dfd-process"
    patched["deployments"][1]["schedules"][0]["interval"] = 300
    assert patched == original


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_stack_up_then_down_stops_everything(tmp_path):
    """``python -m deployments.stack up`` starts server, worker and viewer; ``down`` stops them all."""
    import urllib.request

    port, viewer_port = _free_ports(2)
    env = offline_env(ARTIFACTS_URL=str(tmp_path / "artifacts"), INBOX_URL=str(tmp_path / "inbox"),
                      DFD_WORK_DIR=str(tmp_path / "work"))
    for var in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH"):
        env.pop(var, None)
    stack_dir = tmp_path / "stack"
    cmd = [*PREFECT[:1], "-m", "deployments.stack"]
    flags = ["--port", str(port), "--viewer-port", str(viewer_port), "--stack-dir", str(stack_dir)]
    try:
        up = subprocess.run(cmd + ["up", *flags], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        state = read_state(stack_dir)
        pids = state["pids"]
        assert set(pids) == {"server", "worker", "viewer"} and all(alive(p) for p in pids.values())
        assert f"http://127.0.0.1:{port}" in up.stdout and f"http://127.0.0.1:{viewer_port}/" in up.stdout
        assert (stack_dir / "prefect-home").is_dir()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{viewer_port}/", timeout=10) as r:
            assert r.status == 200
        again = subprocess.run(cmd + ["up", *flags], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = subprocess.run(cmd + ["down", "--stack-dir", str(stack_dir)], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(p) for p in pids.values())
    assert "killing" not in down.stdout  # each stopped on its signals (the worker on the second SIGTERM)
    assert read_state(stack_dir)["pids"] == {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``prefect server start`` with its own PREFECT_HOME, plus the env every CLI call needs."""
    root = tmp_path_factory.mktemp("stack")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = root / "prefect-home"
    home.mkdir()
    base = offline_env(PREFECT_HOME=str(home))
    for var in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_API_KEY"):
        base.pop(var, None)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api_url, timeout=120, proc=proc)
        yield {"root": root, "api_url": api_url, "env": {**base, "PREFECT_API_URL": api_url}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def webhook():
    """A Slack-style webhook receiver on loopback; the worker's flow runs post to it."""
    from test_notify import Receiver

    with Receiver() as rx:
        yield rx


def webhook_texts(rx) -> list[str]:
    return [json.loads(r["body"])["text"] for r in rx.requests]


@pytest.fixture(scope="module")
def project(server, webhook):
    """Tiny labelled data, a tiny inbox (one unreadable file), an empty artifact store; env for the worker."""
    from helpers import make_dataset

    root = server["root"]
    data = make_dataset(root / "data", per_class=12, size=48)
    inbox = root / "inbox"
    batch = make_dataset(inbox / "batch-001", per_class=2, size=48, seed=7)
    (batch / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (batch / "_READY").write_text("")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    env = {
        **server["env"],
        "DATA_URL": str(data),
        "ARTIFACTS_URL": str(artifacts),
        "INBOX_URL": str(inbox),
        "DFD_SYNTHETIC_URL": str(root / "synthetic"),
        "DFD_WORK_DIR": str(root / "work"),
        "DFD_EPOCHS": "2",
        "DFD_BATCH_SIZE": "16",
        "DFD_WIDTH": "8",
        "DFD_MAX_CROP_SIZE": "32",
        "DFD_EVAL_CROPS": "1",
        "DFD_AUGMENT_PER_IMAGE": "0",
        "DFD_MIN_IMAGES_PER_CLASS": "6",
        "DFD_MIN_AUC": "0",  # quality floor off: 2 epochs on tiny data; these tests are about deployments
        "WEBHOOK_URL": webhook.url,
        # configurable schedule: a non-default time zone, the default cron and interval
        "RETRAIN_TIMEZONE": "Europe/Berlin",
    }
    for var in ("RETRAIN_CRON", "SCORE_INBOX_INTERVAL", "DFD_REPO_DIR", "PYTHONPATH", "DFD_WEBHOOK_URL"):
        env.pop(var, None)
    return {"root": root, "artifacts": artifacts, "inbox": inbox, "env": env}


@pytest.fixture(scope="module")
def client(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server["api_url"]}), get_client(sync_client=True) as c:
        yield c


@pytest.fixture(scope="module")
def deployed(project, client):
    """The pool and both deployments, made from the real prefect.yaml."""
    assert ensure_work_pool(project["env"], POOL, "process") is True
    assert ensure_work_pool(project["env"], POOL, "process") is False  # idempotent
    deploy_all(project["env"], POOL)
    return {name: client.read_deployment_by_name(name) for name in (RETRAIN, SCORE)}


def run_worker(env: dict, timeout: float = 240) -> str:
    """One ``prefect worker start --run-once``: submits every due run of the pool and waits for them."""
    proc = subprocess.run(PREFECT + ["worker", "start", "--pool", POOL, "--type", "process", "--run-once"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def wait_final(client, run_ids, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.read_flow_run(i) for i in run_ids]
        if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def run_logs(client, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    return "\n".join(entry.message for entry in logs)


def test_registered_schedules_are_the_declared_ones(deployed, client):
    declared = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in declared["deployments"]}
    retrain, score = deployed[RETRAIN], deployed[SCORE]

    assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
    assert [s.schedule.timezone for s in retrain.schedules] == ["Europe/Berlin"]
    interval = by_name["score-inbox"]["schedules"][0]["interval"]
    assert [s.schedule.interval for s in score.schedules] == [timedelta(seconds=interval)] == [
        timedelta(minutes=5)]
    assert all(s.active for s in retrain.schedules + score.schedules)
    assert score.parameters == {}
    for d in (retrain, score):
        assert d.work_pool_name == POOL
        assert d.global_concurrency_limit.limit == 1
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert set(d.tags) == set(declared["definitions"]["tags"])
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": str(REPO_ROOT)}}]
    # the scheduler has put the next nightly runs on the calendar, at 02:00 Berlin time
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + 30
    while True:
        upcoming = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=3)
        if upcoming or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert upcoming, "no scheduled runs"
    from zoneinfo import ZoneInfo

    for run in upcoming:
        local = run.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
        assert (local.hour, local.minute) == (2, 0) and run.state.is_scheduled()


@pytest.fixture(scope="module")
def schedules_paused(deployed, client):
    """Pause the schedules (the server then deletes their future runs) so only triggered runs execute."""
    for d in deployed.values():
        for s in d.schedules:
            client.update_deployment_schedule(d.id, s.id, active=False)
    return deployed


@pytest.fixture(scope="module")
def first_retrain(schedules_paused, project, client):
    d = schedules_paused[RETRAIN]
    run = client.create_flow_run_from_deployment(d.id)
    started = time.monotonic()
    run_worker(project["env"])
    (run,) = wait_final(client, [run.id])
    return {"run": run, "seconds": time.monotonic() - started}


def test_retrain_deployment_trains_and_publishes(first_retrain, project, client, webhook):
    run = first_retrain["run"]
    assert run.state.is_completed(), (run.state, run_logs(client, run.id)[-3000:])
    assert not any("retrain" in t for t in webhook_texts(webhook))  # promoted: nothing to report
    assert run.name.startswith("retrain ") and "data=" in run.name
    champion = json.loads((project["artifacts"] / "champion.json").read_text())
    version = champion["version"]
    folder = project["artifacts"] / "runs" / version
    assert (folder / "_COMPLETE").exists() and (folder / "model.keras").exists()
    record = json.loads((folder / "run.json").read_text())
    assert record["decision"] == "promoted"
    assert record["data_counts"]["train"]["real"] > 0
    # the UI's Artifacts page: the metrics table and the plot locations, under stable keys
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    keys = {a.key for a in artifacts}
    assert {"retrain-metrics", "retrain-plots"} <= keys
    plots = next(a for a in artifacts if a.key == "retrain-plots")
    assert "roc.png" in str(plots.data)


def test_score_inbox_deployment_scores_the_ready_folder(first_retrain, schedules_paused, project, client,
                                                        webhook):
    d = schedules_paused[SCORE]
    run = client.create_flow_run_from_deployment(d.id)
    run_worker(project["env"])
    (run,) = wait_final(client, [run.id])
    assert run.state.is_completed(), (run.state, run_logs(client, run.id)[-3000:])
    (summary_file,) = (project["artifacts"] / "scores").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    champion = json.loads((project["artifacts"] / "champion.json").read_text())["version"]
    assert summary["model_version"] == champion
    assert summary["counts"]["error"] == 1
    assert summary["counts"]["real"] + summary["counts"]["deepfake"] == 4
    rows = [json.loads(line) for line in (summary_file.parent / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in rows if r["error"]) == ["broken.png"]
    # the webhook heard about the unreadable file
    (text,) = [t for t in webhook_texts(webhook) if t.startswith("score-batch:")]
    assert f"1 file(s) of batch {summary['batch_id']} could not be read" in text
    assert str(project["inbox"] / "batch-001") in text
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    keys = {a.key for a in client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
    assert "score-inbox" in keys and any(k.startswith("score-") and k != "score-inbox" for k in keys)


def test_piled_up_late_runs_collapse_into_one_quick_unchanged_run(first_retrain, schedules_paused, project,
                                                                   client):
    """Three nightly runs missed during 'downtime': one runs (data unchanged: quick), the rest are cancelled."""
    from prefect.states import Scheduled

    d = schedules_paused[RETRAIN]
    versions_before = sorted(p.name for p in (project["artifacts"] / "runs").iterdir())
    now = datetime.now(UTC)
    ids = [client.create_flow_run_from_deployment(
        d.id, state=Scheduled(scheduled_time=now - timedelta(days=days))).id for days in (3, 2, 1)]
    run_worker(project["env"])
    runs = wait_final(client, ids)
    completed = [r for r in runs if r.state.is_completed()]
    cancelled = [r for r in runs if r.state.is_cancelled()]
    assert len(completed) == 1 and len(cancelled) == 2, [(r.state.name, r.state.message) for r in runs]
    assert all("concurrency limit" in (r.state.message or "") for r in cancelled)
    (run,) = completed
    assert "unchanged" in run_logs(client, run.id)
    assert run.total_run_time.total_seconds() < first_retrain["run"].total_run_time.total_seconds() / 2
    assert sorted(p.name for p in (project["artifacts"] / "runs").iterdir()) == versions_before


def test_failed_run_calls_the_webhook_and_leaves_the_champion(first_retrain, schedules_paused, project, client,
                                                              webhook):
    champion_before = (project["artifacts"] / "champion.json").read_text()
    d = schedules_paused[RETRAIN]
    missing = project["root"] / "no-such-data"
    run = client.create_flow_run_from_deployment(d.id, parameters={"data_url": str(missing), "force": True})
    run_worker(project["env"])
    (run,) = wait_final(client, [run.id])
    assert run.state.is_failed(), run.state
    deadline = time.monotonic() + 15  # the on_failure hook runs as the flow run finishes
    while not any("Failed" in t for t in webhook_texts(webhook)) and time.monotonic() < deadline:
        time.sleep(0.5)
    (text,) = [t for t in webhook_texts(webhook) if "Failed" in t]
    assert text.startswith(":x: retrain run ") and f"flow_run_id: {run.id}" in text
    assert (project["artifacts"] / "champion.json").read_text() == champion_before
