"""Optional notifications to a Slack-compatible incoming webhook.

Called when a challenger model is rejected, when a scoring batch holds files that could not be read, and
when a flow run fails where no server exists (see :func:`flow_failure_hook`; on a server, Prefect's
automations alert instead). Off when no URL is configured (``WEBHOOK_URL`` / ``DFD_WEBHOOK_URL``).

A notification must never break the job that sends it: :func:`notify` returns ``False`` instead of raising,
and gives up after a short timeout. The body is Slack's ``{"text": ...}``; extra ``fields`` are appended to
the text as ``key: value`` lines (readable everywhere) and also sent as Slack attachment fields.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
MAX_TEXT_CHARS = 3000  # Slack truncates long messages anyway; keep bodies small


def build_payload(text: str, **fields: Any) -> dict[str, Any]:
    """The JSON body sent for ``text`` and ``fields`` (``None`` values are left out)."""
    items = [(str(k), _short(v)) for k, v in fields.items() if v is not None]
    lines = [str(text)] + [f"{k}: {v}" for k, v in items]
    payload: dict[str, Any] = {"text": "\n".join(lines)[:MAX_TEXT_CHARS]}
    if items:
        attachment_fields = [{"title": k, "value": v, "short": len(v) < 40} for k, v in items]
        payload["attachments"] = [{"fields": attachment_fields}]
    return payload


def notify(webhook_url: str, text: str, timeout: float = DEFAULT_TIMEOUT_S, **fields: Any) -> bool:
    """POST ``text`` (plus ``fields``) to ``webhook_url``; ``True`` when the receiver answered 2xx.

    Returns ``False`` without doing anything when ``webhook_url`` is empty, and ``False`` (after logging a
    warning that does not include the URL, which is a secret) on any error or timeout. Never raises.
    """
    if not webhook_url:
        return False
    try:
        body = json.dumps(build_payload(text, **fields), default=str).encode("utf-8")
        request = urllib.request.Request(
            webhook_url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "dfd-notify/1"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
            ok = 200 <= response.status < 300
        if not ok:
            log.warning("webhook answered HTTP %s", response.status)
        return ok
    except urllib.error.HTTPError as exc:
        log.warning("webhook answered HTTP %s", exc.code)
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
        log.warning("webhook call failed: %s", type(exc).__name__)
    return False


def configured_webhook(env: dict[str, str] | None = None) -> str:
    """The webhook URL of the settings (``DFD_WEBHOOK_URL``, else ``WEBHOOK_URL``), or ``""``."""
    from dfd.settings import Settings

    return str(Settings.one_from_env("webhook_url", env))


def notify_configured(text: str, **fields: Any) -> bool:
    """:func:`notify` with the URL from the environment; off (``False``) when none is set."""
    return notify(configured_webhook(), text, **fields)


def flow_failure_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """A Prefect ``on_failure`` / ``on_crashed`` hook: report the failed run to the configured webhook, only
    when the run has no server of its own (a command on Prefect's temporary server, ``PREFECT_API_URL``
    unset). On a server the automations of ``deployments/automations.yaml`` report failures, crashes and late
    runs, which a hook cannot (a run that never started, a dead worker), so the hook stays quiet there.

    Use as ``@flow(on_failure=[flow_failure_hook], on_crashed=[flow_failure_hook])``.
    """
    if _has_server():
        return
    name = getattr(flow, "name", "flow")
    run_name = getattr(flow_run, "name", "")
    notify_configured(
        f":x: {name} run {run_name} {getattr(state, 'name', 'failed')}",
        flow=name,
        flow_run=run_name,
        flow_run_id=getattr(flow_run, "id", None),
        deployment_id=getattr(flow_run, "deployment_id", None),
        message=getattr(state, "message", None),
    )


def _has_server() -> bool:
    """``True`` when Prefect talks to a configured server (``PREFECT_API_URL``), not a temporary one."""
    from prefect.settings import get_current_settings  # a hook runs inside a flow run: Prefect is loaded

    return bool(get_current_settings().api.url)


def _short(value: Any, limit: int = 500) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
