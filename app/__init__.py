"""The Flask viewer: the champion model, run history, scored batches and one-image classification.

It only reads the artifact store (through :mod:`dfd.storage` and :mod:`dfd.registry`) and scores with
:class:`dfd.predict.Predictor`; it never trains and never imports Prefect. Create it with
:func:`create_app`; serve it in production with ``python -m app`` (waitress, see :mod:`app.serve`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from app.catalog import Catalog
from app.champion import ModelHolder
from app.config import load_config, open_config_store
from app.gate import Gate
from app.thumbnails import ThumbnailCache
from dfd import layout

# Sent with every response: the app's own, and the errors waitress answers by itself (app/serve.py).
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration is defaults, then environment variables, then ``test_config``."""
    app = Flask(__name__)
    app.jinja_options = {**app.jinja_options, "autoescape": True}
    app.url_map.merge_slashes = False  # '//etc/passwd' is a 404, not a redirect to something else
    config = load_config(override=test_config)
    app.config.update(config)
    # Never debug outside tests, whatever FLASK_DEBUG says: the debugger would run code for any visitor.
    app.config["DEBUG"] = bool((test_config or {}).get("DEBUG", False))
    app.debug = app.config["DEBUG"]

    store = open_config_store(app.config, app.config["ARTIFACTS_URL"])
    refresh = float(app.config["REFRESH_SECONDS"])
    app.extensions["dfd_catalog"] = Catalog(store, refresh, int(app.config["TABLE_CACHE_ENTRIES"]))
    wait = float(app.config["PREDICT_WAIT_SECONDS"])
    predict_gate = Gate(int(app.config["PREDICT_CONCURRENCY"]), int(app.config["PREDICT_QUEUE"]), wait)
    app.extensions["dfd_model"] = ModelHolder(store, app.config["CACHE_DIR"], refresh, gate=predict_gate)
    app.extensions["dfd_thumbs"] = ThumbnailCache(
        int(app.config["THUMB_CACHE_ENTRIES"]), int(app.config["THUMB_SIZE"]), int(app.config["THUMB_QUALITY"]),
        gate=Gate(int(app.config["THUMB_CONCURRENCY"]), 1024, wait, what="thumbnails"),
    )
    app.extensions["dfd_source_stores"] = {}

    app.jinja_env.filters["num"] = _num
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["pct"] = _pct
    app.jinja_env.filters["short"] = lambda s, n=12: (str(s)[:n] + "…") if s and len(str(s)) > n else (s or "")
    # Templates name store keys and result labels as the writers do (dfd.layout), not with copies.
    app.jinja_env.globals.update(run_key=layout.run_key, result_labels=layout.RESULT_LABELS,
                                 error_label=layout.ERROR_LABEL)

    from app.views import bp

    app.register_blueprint(bp)

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


def _when(value: Any) -> str:
    """An ISO 8601 time as people read it (``2026-12-02 05:43:10 UTC``), '–' when missing; anything that is
    not such a time is shown as it is."""
    if not value:
        return "–"
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if t.tzinfo is not None else "")


def _num(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or '–' when missing."""
    if value is None or value == "":
        return "–"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "–"
    if f.is_integer() and abs(f) >= 1 and digits >= 0 and isinstance(value, int):
        return f"{int(f):,}"
    return f"{f:.{digits}f}"


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return str(value)
