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
import warnings
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from deployments.config import (
    DEFAULT_DEPLOYMENT_POOLS,
    REPO_ROOT,
    ConfigError,
    deployment_pools,
    file_defaults,
    schedule_settings,
)
from deployments.deploy import (
    PREFECT,
    deploy_all,
    ensure_alerts,
    ensure_work_pool,
    load_alerts,
    offline_env,
    patched_prefect_file,
    wait_healthy,
)
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
    assert schedule_settings({"RETRAIN_CRON": "0 2 * * MON"})["retrain_cron"] == "0 2 * * MON"
    for bad in ({"RETRAIN_CRON": "every night"}, {"RETRAIN_CRON": "61 * * * *"}, {"RETRAIN_CRON": "* * * *"},
                {"RETRAIN_TIMEZONE": "Mars/Olympus"}, {"SCORE_INBOX_INTERVAL": "5m"}, {"SCORE_INBOX_INTERVAL": "2"}):
        with pytest.raises(ConfigError) as err:
            schedule_settings(bad)
        (name, value), = bad.items()
        assert str(err.value).startswith(name) and "\n" not in str(err.value)  # one line, naming the variable
        assert repr(value) in str(err.value) or name == "SCORE_INBOX_INTERVAL"


def test_defaults_are_read_from_prefect_yaml_only(tmp_path):
    """The deployment defaults live once, in prefect.yaml; the schedule and pool there use the same values."""
    defaults = file_defaults()
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pools = {f"{d['entrypoint'].rsplit(':', 1)[1].replace('_', '-')}/{d['name']}": d["work_pool"]["name"]
             for d in spec["deployments"]}
    assert pools == DEFAULT_DEPLOYMENT_POOLS == deployment_pools({})  # each deployment's own pool, from the file
    assert list(pools.values()) == [defaults["retrain_work_pool"], defaults["score_work_pool"]]
    assert deployment_pools({"DFD_WORK_POOL": "one"}) == dict.fromkeys(pools, "one")
    assert "schedules" not in spec["deployments"][1]  # score-inbox: started by the inbox watch when due
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
    assert patched["deployments"][0]["schedules"] == original["deployments"][0]["schedules"]
    for d in patched["deployments"]:
        d["work_pool"]["name"] = "dfd-process"
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
    for var in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH", "DFD_ALERT_URL"):
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
        assert set(pids) == {"server", "worker", "inbox-watch", "viewer"} and all(alive(p) for p in pids.values())
        assert f"http://127.0.0.1:{port}" in up.stdout and f"http://127.0.0.1:{viewer_port}/" in up.stdout
        assert (stack_dir / "prefect-home").is_dir()
        assert "alerts: off (DFD_ALERT_URL is not set)" in up.stdout
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


ALERTS_PATH = "/alerts"  # Prefect's notification block posts here (Apprise json://); the flows' webhook elsewhere


def webhook_texts(rx) -> list[str]:
    return [json.loads(r["body"])["text"] for r in rx.requests if r["path"] != ALERTS_PATH]


def alerts(rx) -> list[dict]:
    return [json.loads(r["body"]) for r in rx.requests if r["path"] == ALERTS_PATH]


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
def alerts_url(webhook) -> str:
    """An Apprise generic JSON webhook URL (``json://``) pointing at the test's receiver."""
    port = webhook.server.server_address[1]
    return f"json://127.0.0.1:{port}{ALERTS_PATH}"


def _automations(client) -> dict[str, list]:
    by_name: dict[str, list] = {}
    for a in client.read_automations():
        by_name.setdefault(a.name, []).append(a)
    return by_name


def test_no_alert_url_creates_nothing_and_says_so(server, client):
    before = client.read_automations()
    said: list[str] = []
    assert ensure_alerts({**server["env"], "DFD_ALERT_URL": " "}, out=said.append) == {}
    assert said == ["alerts: off (DFD_ALERT_URL is not set): no notification block or automation created"]
    assert client.read_automations() == before


@pytest.fixture(scope="module")
def deployed(project, client, alerts_url):
    """The pool, both deployments and the alerts, made from the real prefect.yaml and automations.yaml."""
    assert ensure_work_pool(project["env"], POOL, "process") is True
    assert ensure_work_pool(project["env"], POOL, "process") is False  # idempotent
    deploy_all(project["env"], POOL)
    declared = [a["name"] for a in load_alerts()["automations"]]
    env = {**project["env"], "DFD_ALERT_URL": alerts_url}
    said: list[str] = []
    with warnings.catch_warnings():  # Apprise 2.0 imports the stdlib's deprecated imghdr as it loads its plugins
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        assert ensure_alerts(env, out=said.append) == dict.fromkeys(declared, "created")
    first = {name: [a.id for a in found] for name, found in _automations(client).items()}
    assert ensure_alerts(env, out=said.append) == dict.fromkeys(declared, "updated")  # re-deploy: no duplicates
    assert {name: [a.id for a in found] for name, found in _automations(client).items()} == first
    assert alerts_url not in "\n".join(said)  # the URL is a secret
    return {name: client.read_deployment_by_name(name) for name in (RETRAIN, SCORE)}


def test_alert_automations_and_block_exist_once(deployed, server, client, alerts_url):
    from prefect.blocks.core import Block

    spec = load_alerts()
    block = spec["notification_block"]
    saved = Block.load(f"{block['type']}/{block['name']}")
    assert saved.url.get_secret_value() == alerts_url
    blocks = [b for b in client.read_block_documents() if b.name == block["name"]]
    assert len(blocks) == 1
    found = _automations(client)
    assert sorted(found) == sorted(a["name"] for a in spec["automations"])
    expected_events = {"dfd-flow-run-failed": ["prefect.flow-run.Failed"],
                       "dfd-flow-run-crashed": ["prefect.flow-run.Crashed"],
                       "dfd-flow-run-late": ["prefect.flow-run.Late"]}
    for name, (automation,) in found.items():
        assert automation.enabled and sorted(automation.trigger.expect) == expected_events[name]
        (action,) = automation.actions
        assert action.type == "send-notification" and action.block_document_id == blocks[0].id
    # a same-named copy (made by hand, or by an older deploy) is folded back into one by the next deploy
    from prefect.automations import AutomationCore

    original = found["dfd-flow-run-late"][0]
    client.create_automation(AutomationCore.model_validate(original.model_dump(exclude={"id"})))
    assert len(_automations(client)["dfd-flow-run-late"]) == 2
    ensure_alerts({**server["env"], "DFD_ALERT_URL": alerts_url}, out=lambda _: None)
    assert {name: len(found) for name, found in _automations(client).items()} == dict.fromkeys(found, 1)


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
    assert "schedules" not in by_name["score-inbox"]
    assert score.schedules == []  # started by the inbox watch when a folder is due: its runs are real work
    assert all(s.active for s in retrain.schedules)
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


def test_inbox_watch_starts_score_inbox_only_when_a_folder_is_due(first_retrain, schedules_paused, project,
                                                                  client, webhook):
    """The inbox watch's check, as the stack runs it, starts no run at all on an idle inbox; on a ready folder
    it starts exactly one score-inbox run, which the worker then runs."""
    import sys

    from helpers import make_dataset
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    score = schedules_paused[SCORE]
    runs_before = len(client.read_flow_runs(limit=200))

    def score_runs() -> list:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[score.id])))

    def check(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "flows.inbox_check", *args], env=project["env"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    idle = project["root"] / "idle-inbox"
    make_dataset(idle / "still-copying", per_class=1, size=32)  # fresh files, no marker: not ready
    assert check("--inbox-url", str(idle)) == ""
    assert len(client.read_flow_runs(limit=200)) == runs_before  # no run of any flow: nothing in the UI
    assert "due: batch-001; started" in check()  # the project's inbox: batch-001 is ready
    (run,) = score_runs()
    assert "already waiting or running" in check() and len(score_runs()) == 1  # no second run while it waits
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


def test_failed_run_fires_the_alert_automation_and_leaves_the_champion(first_retrain, schedules_paused, project,
                                                                      client, webhook):
    """The server's automation (not the flow's hook) notifies the alert URL of a failed deployment run."""
    champion_before = (project["artifacts"] / "champion.json").read_text()
    d = schedules_paused[RETRAIN]
    missing = project["root"] / "no-such-data"
    run = client.create_flow_run_from_deployment(d.id, parameters={"data_url": str(missing), "force": True})
    run_worker(project["env"])
    (run,) = wait_final(client, [run.id])
    assert run.state.is_failed(), run.state
    deadline = time.monotonic() + 180  # event -> trigger -> action -> Apprise: seconds, but a busy CI is slow
    while not any(str(run.id) in a["message"] for a in alerts(webhook)) and time.monotonic() < deadline:
        time.sleep(0.5)
    mine = [a for a in alerts(webhook) if str(run.id) in a["message"]]
    assert mine, f"no alert for failed run {run.id} reached the receiver within 180 s: {alerts(webhook)}"
    (alert,) = mine
    assert alert["title"] == f"deepfake-batch: retrain run {run.name} failed"
    assert f"retrain/{run.name} entered state Failed" in alert["message"]
    assert not any("Failed" in t for t in webhook_texts(webhook))  # the in-process hook stays quiet on a server
    assert (project["artifacts"] / "champion.json").read_text() == champion_before


def test_each_deployment_lands_in_the_pool_prefect_yaml_names(deployed, project, client, tmp_path):
    """Placement: with retraining and scoring given different pools in prefect.yaml's defaults (as production
    would: a GPU pool and a scoring pool), each deployment is registered in its own. Last in the module: it
    moves the module's deployments to other pools."""
    text = (REPO_ROOT / "prefect.yaml").read_text()
    pools = {RETRAIN: "dfd-test-train", SCORE: "dfd-test-score"}
    for key, anchor, pool in (("retrain_work_pool", "retrain_pool_name", pools[RETRAIN]),
                              ("score_work_pool", "score_pool_name", pools[SCORE])):
        line = f"    {key}: &{anchor} {DEFAULT_DEPLOYMENT_POOLS[RETRAIN if key.startswith('retrain') else SCORE]}\n"
        assert text.count(line) == 1, f"prefect.yaml no longer has the line {line!r}"
        text = text.replace(line, f"    {key}: &{anchor} {pool}\n")
    copy = tmp_path / "prefect.yaml"
    copy.write_text(text)
    for pool in pools.values():
        ensure_work_pool(project["env"], pool, "process")
    deploy_all(project["env"], prefect_file=copy)
    for name, pool in pools.items():
        assert client.read_deployment_by_name(name).work_pool_name == pool
