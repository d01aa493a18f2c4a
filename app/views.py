"""Routes: HTML pages and the JSON API that mirrors them."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from app.catalog import SORTS, Catalog, Rescoring, ResultTable, iter_csv, safe_name
from app.champion import ModelHolder, NoModel, Verdict
from app.config import open_config_store
from app.gate import Busy
from app.thumbnails import ThumbnailCache, content_key
from dfd.imageio import ImageError, has_image_extension
from dfd.layout import RESULT_LABELS, metric_rows
from dfd.storage import NotFound, StorageError, Store, clean_key

bp = Blueprint("viewer", __name__)

ROLLBACK_COMMAND = "dfd-registry rollback --to {version}"


def catalog() -> Catalog:
    return current_app.extensions["dfd_catalog"]


def model() -> ModelHolder:
    return current_app.extensions["dfd_model"]


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


# --- helpers shared by pages and API --------------------------------------------------------------------
def confusion(metrics: dict[str, Any]) -> list[list[int]] | None:
    cm = ((metrics.get("test") or {}).get("at_threshold") or {}).get("confusion_matrix")
    return cm if isinstance(cm, list) and len(cm) == 2 else None


def champion_view() -> dict[str, Any] | None:
    """The champion's pointer, run detail, threshold and metrics table, or ``None`` without a champion."""
    cat = catalog()
    pointer = cat.champion_pointer()
    if not pointer:
        return None
    version = pointer.get("version")
    try:
        detail = cat.run_detail(str(version))
    except NotFound:
        return {"pointer": pointer, "version": version, "missing": True}
    metrics = detail["metrics"]
    metadata = detail["metadata"]
    run = detail["run"]
    threshold = metrics.get("threshold", metadata.get("threshold", run.get("threshold")))
    return {
        "pointer": pointer,
        "version": version,
        "missing": False,
        "detail": detail,
        "threshold": threshold,
        "metric_rows": metric_rows(metrics, fallback=detail["metadata_metrics"]),
        "confusion": confusion(metrics),
        # When the model was saved after training (the run itself finishes later, with the promotion).
        "trained_at": metadata.get("created_at") or run.get("finished_at") or run.get("started_at"),
        "data_counts": run.get("data_counts") or {},
        "caveat": detail["caveat"],
    }


def plot_urls(detail: dict[str, Any]) -> list[dict[str, str]]:
    return [{**p, "url": url_for("viewer.artifact", key=p["key"])} for p in detail["plots"]]


def batch_query() -> tuple[str, str, int, int]:
    """label, sort, offset, limit from the query string (pages use ``page``, the API ``offset``)."""
    label = _query_value("label", "", choices=RESULT_LABELS)
    sort = _query_value("sort", "file", choices=SORTS)
    max_size = int(current_app.config["MAX_PAGE_SIZE"])
    per_page = _query_value("per_page", int(current_app.config["PAGE_SIZE"]), low=1, high=max_size)
    limit = _query_value("limit", per_page, low=1, high=max_size)
    if "offset" in request.args:
        offset = _query_value("offset", 0, low=0)
    else:
        offset = (_query_value("page", 1, low=1) - 1) * limit
    return label, sort, offset, limit


def _query_value(name: str, default: Any, *, choices: tuple[str, ...] | None = None, low: int = 0,
                 high: int | None = None) -> Any:
    """One query-string value (``default`` when absent or empty): a word from ``choices``, else a whole number
    from ``low`` to ``high``. A value that cannot be used is a 400 saying why in the JSON API; a page falls
    back instead, to ``default`` (a wrong word, not a number) or to the nearest bound (out of range)."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if choices is not None:
        if raw in choices:
            return raw
        problem, fallback = f"{name} must be one of {', '.join(choices)}, not {raw!r}", default
    else:
        try:
            value = int(raw)
        except ValueError:
            problem, fallback = f"{name} must be a whole number, not {raw!r}", default
        else:
            fallback = max(low, value) if high is None else min(max(low, value), high)
            if fallback == value:
                return value
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            problem = f"{name} must be {bound}, not {value}"
    if wants_json():
        abort(400, description=problem)
    return fallback


def batch_rows(table: ResultTable, label: str, sort: str, offset: int, limit: int) -> tuple[int, list[dict]]:
    order = table.order(label, sort)
    return len(order), table.rows(order[offset : offset + limit])


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def check_token() -> None:
    """When ``VIEWER_TOKEN`` is set, require it as form field ``token`` or ``Authorization: Bearer``."""
    expected = current_app.config.get("VIEWER_TOKEN") or ""
    if not expected:
        return
    given = request.form.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        abort(401, description="a valid token is required to upload (form field 'token' or Bearer header)")


def read_upload() -> tuple[bytes, str]:
    """The uploaded file's bytes and name, or 400. Size is limited by MAX_CONTENT_LENGTH (413)."""
    upload = request.files.get("image") or request.files.get("file")
    if upload is None or not upload.filename and not upload.content_length:
        abort(400, description="no file uploaded: send one image in the form field 'image'")
    data = upload.read()
    if not data:
        abort(400, description="not a usable image (zero bytes): the uploaded file is empty")
    return data, upload.filename or "upload"


def busy(exc: Busy) -> ServiceUnavailable:
    """The 503 for a full queue; its Retry-After header survives the error handlers."""
    return ServiceUnavailable(description=str(exc), retry_after=exc.retry_after)


def classify_upload(explain: bool) -> Verdict:
    check_token()
    data, name = read_upload()
    cfg = current_app.config
    try:
        verdict = model().classify(
            data, int(cfg["MAX_IMAGE_PIXELS"]), explain=explain, max_tiles=int(cfg["EXPLAIN_MAX_TILES"]),
            display_size=int(cfg["EXPLAIN_DISPLAY_SIZE"]), explain_side=int(cfg["EXPLAIN_MAX_SIDE"]),
        )
    except ImageError as exc:
        abort(400, description=f"not a usable image ({exc.reason}): {exc.detail or 'cannot be decoded'}")
    except NoModel as exc:
        abort(503, description=str(exc))
    except Busy as exc:
        raise busy(exc) from None
    keep = cfg.get("KEEP_UPLOADS_URL") or ""
    if keep:
        ext = name.rsplit(".", 1)[-1].lower() if has_image_extension(name) else "bin"
        digest = hashlib.sha256(data).hexdigest()
        open_config_store(cfg, keep).write_bytes(f"{digest}.{ext}", data)
    return verdict


def source_store(url: str) -> Store:
    stores: dict[str, Store] = current_app.extensions["dfd_source_stores"]
    store = stores.get(url)
    if store is None:
        store = open_config_store(current_app.config, url)
        stores[url] = store
    return store


# --- pages ----------------------------------------------------------------------------------------------
@bp.get("/")
def overview():
    cat = catalog()
    champ = champion_view()
    plots = plot_urls(champ["detail"]) if champ and not champ["missing"] else []
    n = int(current_app.config["RECENT_ITEMS"])
    return render_template(
        "overview.html", champ=champ, plots=plots, runs=cat.runs(limit=n), batches=cat.batches(limit=n),
    )


@bp.get("/runs")
def runs_page():
    return render_template("runs.html", runs=catalog().runs(), rollback=ROLLBACK_COMMAND)


@bp.get("/runs/<version>")
def run_page(version: str):
    detail = catalog().run_detail(version)
    return render_template(
        "run.html",
        d=detail,
        plots=plot_urls(detail),
        metric_rows=metric_rows(detail["metrics"], fallback=detail["metadata_metrics"]),
        confusion=confusion(detail["metrics"]),
        rollback=ROLLBACK_COMMAND.format(version=version),
    )


@bp.get("/batches")
def batches_page():
    return render_template("batches.html", batches=catalog().batches())


@dataclass
class BatchView:
    """One page of a batch: its summary, its whole table, the query and the rows it selects."""

    summary: dict[str, Any]
    table: ResultTable
    label: str
    sort: str
    offset: int
    limit: int
    total: int  # rows that match the label filter
    rows: list[dict[str, Any]]


def batch_view(batch_id: str) -> BatchView:
    """The batch page's content for the query string; shared by the page and the JSON API so they agree."""
    cat = catalog()
    summary = cat.batch_summary(batch_id)
    table = cat.results(batch_id)
    label, sort, offset, limit = batch_query()
    total, rows = batch_rows(table, label, sort, offset, limit)
    return BatchView(summary, table, label, sort, offset, limit, total, rows)


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str):
    v = batch_view(batch_id)
    page = v.offset // v.limit + 1
    pages = max(1, -(-v.total // v.limit))
    args = {k: x for k, x in (("label", v.label), ("sort", v.sort), ("per_page", v.limit)) if x}

    def page_url(p: int) -> str:
        return url_for("viewer.batch_page", batch_id=batch_id, page=p, **args)

    return render_template(
        "batch.html",
        s=v.summary,
        rows=v.rows,
        total=v.total,
        all_rows=len(v.table),
        counts=v.table.counts(),
        label=v.label,
        sort=v.sort,
        page=page,
        pages=pages,
        offset=v.offset,
        limit=v.limit,
        prev_url=page_url(page - 1) if page > 1 else None,
        next_url=page_url(page + 1) if page < pages else None,
        thumb_prefix=url_for("viewer.batch_page", batch_id=batch_id) + "/thumb/",  # one url_for, not 50
        csv_url=url_for("viewer.batch_csv", batch_id=batch_id, **{k: x for k, x in args.items() if k != "per_page"}),
    )


@bp.get("/batches/<batch_id>/results.csv")
def batch_csv(batch_id: str):
    table = catalog().results(batch_id)
    label, sort, _, _ = batch_query()
    order = table.order(label, sort)
    name = f"{safe_name(batch_id)}-{label or 'all'}.csv"
    return Response(
        stream_with_context(iter_csv(table, order)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/batches/<batch_id>/thumb/<int:index>.jpg")
def thumbnail(batch_id: str, index: int):
    """A small JPEG made from the scored original (decoded safely); the original is never served."""
    cat = catalog()
    summary = cat.batch_summary(batch_id)
    table = cat.results(batch_id)
    if not 0 <= index < len(table):
        abort(404)
    row = table.row(index)
    source = str(summary.get("source") or "")
    if not source or not row.get("path"):
        abort(404)
    thumbs: ThumbnailCache = current_app.extensions["dfd_thumbs"]
    key = content_key(source, str(row["path"]), str(row.get("sha256", "")), str(thumbs.size))
    data = thumbs.get(key)
    if data is None:
        try:
            path = clean_key(str(row["path"]))
            store = source_store(source)
            if store.stat(path).size > current_app.config["MAX_CONTENT_LENGTH"] * 4:
                abort(404)
            data = thumbs.make(key, store.read_bytes(path), int(current_app.config["MAX_IMAGE_PIXELS"]))
        except (StorageError, ImageError):
            abort(404)
        except Busy as exc:
            raise busy(exc) from None
    resp = Response(data, mimetype="image/jpeg")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    resp.set_etag(key)
    return resp.make_conditional(request)


@bp.get("/artifacts/<path:key>")
def artifact(key: str):
    """A file from inside the artifact store (plots, JSON, CSV); anything else is 404."""
    cat = catalog()
    key, content_type = cat.servable(key)
    resp = Response(cat.read(key), content_type=content_type)  # the full type: Flask adds no second charset
    resp.headers["Cache-Control"] = "private, max-age=60"
    return resp


@bp.route("/classify", methods=["GET", "POST"])
def classify_page():
    token_required = bool(current_app.config.get("VIEWER_TOKEN"))
    if request.method == "GET":
        return render_template("classify.html", verdict=None, error=None, token_required=token_required)
    try:
        verdict = classify_upload(explain=True)
    except HTTPException as exc:
        if exc.code == 413:
            raise
        page = render_template("classify.html", verdict=None, error=exc.description, token_required=token_required)
        return page, exc.code, _retry_after(exc)
    return render_template("classify.html", verdict=verdict, error=None, token_required=token_required)


# --- JSON API -------------------------------------------------------------------------------------------
@bp.get("/healthz")
def healthz():
    cat = catalog()
    try:
        champ = cat.champion_version()
        cat.versions()
    except StorageError as exc:
        return jsonify(status="error", error=str(exc)), 503
    return jsonify(status="ok", champion=champ, model_loaded=model().loaded_version)


@bp.get("/readyz")
def readyz():
    """200 once the champion is loaded and has made one prediction (loading it now if needed), so a client
    or a test can wait for the model instead of letting the first upload pay for it; 503 without one."""
    try:
        version = model().warm()
    except NoModel as exc:
        return jsonify(status="no model", error=str(exc)), 503
    except Busy as exc:
        raise busy(exc) from None
    return jsonify(status="ready", model_version=version)


@bp.get("/api/champion")
def api_champion():
    champ = champion_view()
    if champ is None:
        abort(404, description="no champion model yet")
    if champ["missing"]:
        abort(404, description=f"the champion {champ['version']!r} is not a complete run")
    d = champ["detail"]
    return jsonify(json_safe({
        "version": champ["version"],
        "promoted_at": champ["pointer"].get("promoted_at"),
        "reason": champ["pointer"].get("reason"),
        "history": champ["pointer"].get("history", []),
        "trained_at": champ["trained_at"],
        "threshold": champ["threshold"],
        "data_counts": champ["data_counts"],
        "model_caveat": champ["caveat"],
        "metrics": d["metrics"],
        "run": d["run"],
        "plots": {p["name"]: p["url"] for p in plot_urls(d)},
    }))


@bp.get("/api/runs")
def api_runs():
    return jsonify(json_safe({"runs": catalog().runs()}))


@bp.get("/api/runs/<version>")
def api_run(version: str):
    d = catalog().run_detail(version)
    return jsonify(json_safe({
        **{k: d[k] for k in ("version", "run", "metrics", "metadata", "config", "files", "is_champion")},
        "model_caveat": d["caveat"],
        "plots": {p["name"]: p["url"] for p in plot_urls(d)},
        "rollback_command": ROLLBACK_COMMAND.format(version=version),
    }))


@bp.get("/api/batches")
def api_batches():
    return jsonify(json_safe({"batches": catalog().batches()}))


@bp.get("/api/batches/<batch_id>")
def api_batch(batch_id: str):
    v = batch_view(batch_id)
    for row in v.rows:
        row.pop("index", None)
    return jsonify(json_safe({
        "summary": v.summary, "label": v.label or None, "sort": v.sort, "total": v.total, "offset": v.offset,
        "limit": v.limit, "rows": v.rows,
    }))


@bp.post("/api/predict")
def api_predict():
    explain = request.args.get("explain", "") in ("1", "true", "yes")
    return jsonify(classify_upload(explain=explain).as_dict())


# --- errors ---------------------------------------------------------------------------------------------
@bp.app_errorhandler(NotFound)
def not_found_error(exc: NotFound):
    """What was asked for is not in the store (or may not be served): 404, before the 503 of other errors."""
    return _error(404, str(exc))


@bp.app_errorhandler(Rescoring)
def rescoring_error(exc: Rescoring):
    """A batch caught between its new results and its new summary: 503, try again shortly."""
    response, status = _error(503, str(exc))
    response.headers["Retry-After"] = "5"
    return response, status


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    code = exc.code or 500
    description = exc.description
    if code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        description = f"the upload is larger than the limit of {limit / 1e6:.1f} MB"
    response, status = _error(code, description)
    response.headers.update(_retry_after(exc))
    return response, status


def _retry_after(exc: HTTPException) -> dict[str, str]:
    """The Retry-After header an HTTP error carries (a busy 503), if any."""
    value = getattr(exc, "retry_after", None)
    return {"Retry-After": str(value)} if value is not None else {}


@bp.app_errorhandler(StorageError)
def storage_error(exc: StorageError):
    current_app.logger.warning("storage error: %s", exc)
    return _error(503, "the artifact store cannot be read right now")


def _error(code: int, message: str) -> tuple[Response, int]:
    if wants_json():
        return jsonify(error=message, status=code), code
    return Response(render_template("error.html", code=code, message=message), mimetype="text/html"), code
