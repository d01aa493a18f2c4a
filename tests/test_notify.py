"""The webhook notifier against a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from dfd import notify as notify_mod
from dfd.notify import build_payload, flow_failure_hook, notify, notify_configured


class Receiver:
    """A tiny webhook receiver: records every POST, answers with ``status`` after ``delay`` seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def json(self, i: int = -1) -> dict:
        return json.loads(self.requests[i]["body"])


def test_posts_slack_compatible_json_with_fields():
    with Receiver() as rx:
        sent = notify(rx.url, "challenger rejected", version="20260101-x", test_auc=0.81, skipped=None)
    assert sent is True
    assert len(rx.requests) == 1
    req = rx.requests[0]
    assert req["path"] == "/hooks/T000/B000"
    assert req["headers"]["Content-Type"] == "application/json"
    body = rx.json()
    assert body["text"].splitlines() == ["challenger rejected", "version: 20260101-x", "test_auc: 0.81"]
    fields = body["attachments"][0]["fields"]
    assert [f["title"] for f in fields] == ["version", "test_auc"]  # None values are left out


def test_plain_text_has_no_attachments():
    assert build_payload("hello") == {"text": "hello"}


def test_empty_url_is_off_and_sends_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(notify_mod.urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    assert notify("", "anything") is False
    assert calls == []


def test_error_status_returns_false_without_raising():
    with Receiver(status=500) as rx:
        assert notify(rx.url, "boom") is False
    assert len(rx.requests) == 1


def test_unreachable_receiver_returns_false():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert notify(f"http://127.0.0.1:{port}/x", "boom", timeout=1) is False


def test_bad_url_returns_false():
    assert notify("not a url", "boom") is False


def test_slow_receiver_times_out_quickly():
    with Receiver(delay=3.0) as rx:
        start = time.monotonic()
        assert notify(rx.url, "slow", timeout=0.5) is False
        assert time.monotonic() - start < 2.5


def test_configured_url_from_environment(monkeypatch):
    monkeypatch.delenv("DFD_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("WEBHOOK_URL", raising=False)
    assert notify_configured("off by default") is False
    with Receiver() as rx:
        monkeypatch.setenv("WEBHOOK_URL", rx.url)
        assert notify_configured("on", batch="b1") is True
    assert rx.json()["text"] == "on\nbatch: b1"


@pytest.mark.parametrize("state_name", ["Failed", "Crashed"])
def test_flow_failure_hook_reports_the_run_without_a_server(monkeypatch, state_name):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    flow = SimpleNamespace(name="retrain")
    run = SimpleNamespace(name="retrain 2026-11-24 data=3f2a", id="abc-123", deployment_id=None)
    state = SimpleNamespace(name=state_name, message="Flow run encountered an exception: OSError")
    with Receiver() as rx, temporary_settings(restore_defaults={PREFECT_API_URL}):  # the temporary server
        monkeypatch.setenv("DFD_WEBHOOK_URL", rx.url)
        flow_failure_hook(flow, run, state)
    text = rx.json()["text"]
    assert f"retrain run retrain 2026-11-24 data=3f2a {state_name}" in text
    assert "flow_run_id: abc-123" in text and "OSError" in text
    assert "deployment_id" not in text


def test_flow_failure_hook_is_quiet_on_a_server(monkeypatch):
    """On a server the automations report failures (tests/test_deployments.py); the hook must not repeat them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with Receiver() as rx, temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        monkeypatch.setenv("DFD_WEBHOOK_URL", rx.url)
        flow_failure_hook(SimpleNamespace(name="retrain"), SimpleNamespace(name="r", id="1"),
                          SimpleNamespace(name="Failed", message="boom"))
    assert rx.requests == []
