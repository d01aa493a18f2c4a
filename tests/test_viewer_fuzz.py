"""Fuzzing the viewer over HTTP (issue 14): generated paths, query strings, headers and upload bodies against
the real Flask app served by waitress with the production server's adjustments (:func:`app.serve.make_server`)
on a loopback port, requests written byte for byte on a raw socket so that nothing is cleaned up on the way.

For every response: never a 5xx, the security headers of :data:`app.SECURITY_HEADERS`, a complete body, no
generated markup reflected unescaped in HTML, and ``/artifacts/`` only ever serves the bytes of a file inside
the store (a canary outside it, reachable through symlinks planted inside, never leaks).

Hypothesis settings are a profile of this module (:data:`FUZZ`): a bounded number of examples, no deadline
(the machine is shared; a slow answer is not a failure), derandomised so that CI runs the same examples each
time. ``DFD_FUZZ_EXAMPLES=2000`` (and ``DFD_FUZZ_RANDOM=1`` for fresh examples) fuzzes longer by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from helpers import png_bytes, publish_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from viewer_fixtures import CHAMPION, REJECTED, publish_fake_run, sample_image, write_batch

from app import SECURITY_HEADERS

BATCH = "batch-0001"
CANARY = "CANARY-7f3c1e-outside-the-store"
UPLOAD_LIMIT = 256 * 1024  # MAX_CONTENT_LENGTH here, so that generated bodies reach the 413s cheaply

settings.register_profile(
    "viewer-fuzz",
    max_examples=int(os.environ.get("DFD_FUZZ_EXAMPLES", "200")),
    deadline=None,  # never race the clock: a slow answer on a loaded machine is not a failure
    derandomize=os.environ.get("DFD_FUZZ_RANDOM", "") != "1",  # the same examples on every CI run
    database=None,  # no example database (Hypothesis keeps only its self-ignored caches in .hypothesis/)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("viewer-fuzz")

# Hypothesis warns "Do not use the `random` module inside strategies" whenever the global random state moved
# while it drew an example. These strategies never touch it (they are plain data, sampled_from and text), but
# other threads of this pytest process legitimately do, at moments no test controls: distributed's IO loop (left
# from the Dask tests), s3transfer's pools, Keras seeding initialisers as a model loads in a server thread, and
# perhaps Prefect's jittered reconnects to the session's API. Under load one of them once landed inside a draw
# and failed CI (FlakyStrategyDefinition on replay). The check cannot tell those threads from a strategy, so it
# is switched off for this module only, with the "overly large repr" hint that building its message (the repr of
# a strategy holding whole images) raises first; test_a_thread_moving_the_global_random_state_breaks_no_
# fuzz_test below proves that such a thread no longer matters.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

# Markup that must never come back unescaped in an HTML page (the tag name is unique to this test).
XSS = ['<fuzzq>', '"><fuzzq x="', "'><fuzzq x='", '<svg/onload=fuzzq>', '</title><fuzzq>', '" onload="fuzzq',
       "' onload='fuzzq", "javascript:fuzzq()"]
UNESCAPED = [b"<fuzzq", b"<svg/onload", b'" onload="fuzzq', b"' onload='fuzzq", b'="javascript:fuzzq']


# --- the server -----------------------------------------------------------------------------------------
class Viewer:
    """The server under test and what the checks need to know of its store."""

    def __init__(self, port: int, root: Path, max_page_size: int, servable: frozenset[str]):
        self.host, self.port, self.root, self.max_page_size = "127.0.0.1", port, root, max_page_size
        self.servable = servable  # sha256 of every regular file under runs/ and scores/ of the store

    def __repr__(self) -> str:  # short, for Hypothesis's report of a failing example
        return f"Viewer(http://{self.host}:{self.port}/)"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory) -> Iterator[Viewer]:
    """A store with a tiny champion, a rejected run with plots and a 40-row batch; a canary file outside it,
    reachable through symlinks planted inside; the app under waitress on a free loopback port."""
    from app import create_app
    from app.serve import make_server

    root = tmp_path_factory.mktemp("fuzz")
    artifacts = root / "artifacts"
    publish_tiny_model(artifacts, version=CHAMPION, per_class=8, epochs=1)  # its quality does not matter here
    publish_fake_run(artifacts, REJECTED, "rejected", "<b>test AUC</b> below the champion's")
    write_batch(artifacts, BATCH, root / "inbox" / BATCH, 40)
    (root / "secret.json").write_text(json.dumps({"canary": CANARY}))
    (root / "secret.png").write_bytes(CANARY.encode())
    (artifacts / "runs" / REJECTED / "leak.json").symlink_to(root / "secret.json")
    (artifacts / "scores" / BATCH / "leak.csv").symlink_to(root / "secret.json")
    (artifacts / "runs" / "outside").symlink_to(root)
    inside = artifacts.resolve()
    servable = frozenset(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for top in ("runs", "scores") for p in (artifacts / top).rglob("*")
        if p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(inside)
    )
    app = create_app({"ARTIFACTS_URL": str(artifacts), "REFRESH_SECONDS": 0, "CACHE_DIR": str(root / "cache"),
                      "MAX_CONTENT_LENGTH": UPLOAD_LIMIT})
    server = make_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="waitress-fuzz", daemon=True)
    thread.start()
    v = Viewer(int(server.effective_port), root, int(app.config["MAX_PAGE_SIZE"]), servable)
    try:
        ready = send(v, b"GET", b"/readyz")  # loads the model once, outside the examples
        assert ready.status == 200, ready.body[:300]
        yield v
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=120)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def send(v: Viewer, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None,
         body: bytes = b"", content_length: int | None = None) -> Reply:
    """One request written byte for byte on a fresh connection (``Connection: close``); the whole answer.
    ``http.client`` raises if the body is shorter than its ``Content-Length`` (an incomplete response)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    if body or content_length is not None:
        lines.append(b"Content-Length: " + str(len(body) if content_length is None else content_length).encode())
    with socket.create_connection((v.host, v.port), timeout=120) as sock:
        try:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) before reading the whole body; its answer is still there
        resp = http.client.HTTPResponse(sock, method=method.decode())
        try:
            resp.begin()
            data = resp.read()
        except TimeoutError:
            pytest.fail(f"no complete answer within 120 s to {method!r} {target[:200]!r}")
        finally:
            resp.close()
    return Reply(resp.status, resp.headers, data)


def refused_by_waitress(reply: Reply) -> bool:
    """Whether waitress answered by itself (a malformed request: the app never saw it)."""
    return reply.status == 400 and reply.body.endswith(b"(generated by dfd-viewer)")


def check(reply: Reply, what: object) -> None:
    """What holds for every response: no 5xx, the security headers, no unescaped markup, no canary."""
    assert reply.status < 500, (what, reply.status, reply.body[:300])
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers.get(name) == value, (what, reply.status, name)
    assert CANARY.encode() not in reply.body, what
    assert b"root:x:0:0" not in reply.body, what
    if reply.content_type.startswith("text/html"):
        for bad in UNESCAPED:
            assert bad not in reply.body, (what, bad, reply.body[:300])


# --- paths ----------------------------------------------------------------------------------------------
PREFIXES = ["/", "//", "/artifacts/", "/artifacts/runs/", f"/artifacts/runs/{CHAMPION}/",
            f"/artifacts/runs/{REJECTED}/", f"/artifacts/scores/{BATCH}/", "/runs/", "/api/runs/", "/batches/",
            "/api/batches/", f"/batches/{BATCH}/", f"/batches/{BATCH}/thumb/", "/static/", "/classify/"]
SEGMENTS = [".", "..", "%2e%2e", "%2E%2e", ".%2e", "%252e%252e", "..%2f", "%2f", "%2F", "%5c", "\\", "..\\..",
            "%00", "%c0%ae%c0%ae", "%ef%bc%8e%ef%bc%8e", "\uff0e\uff0e", "~", "runs", "scores", "outside",
            CHAMPION, REJECTED, BATCH, "champion.json", "secret.json", "secret.png", "leak.json", "leak.csv",
            "roc.png", "metrics.json", "results.csv", "results.jsonl", "summary.json", "model.keras", ".hidden.png",
            "etc", "passwd", "0.jpg", "-1.jpg", "99999999999999999999.jpg", "thumb", "results.csv%00.png"]


def encode_segment(text: str, how: str) -> bytes:
    """A path segment as sent: percent-encoded UTF-8, raw UTF-8 bytes (not valid HTTP, sent anyway), or
    encoded twice."""
    if how == "raw":
        return text.encode("utf-8", "surrogatepass")
    once = quote(text.encode("utf-8", "surrogatepass"), safe="")
    return (once if how == "quoted" else quote(once, safe="")).encode()


segment = st.one_of(
    st.sampled_from(SEGMENTS).map(str.encode),
    st.builds(encode_segment, st.one_of(st.sampled_from(XSS), st.text(min_size=1, max_size=12)),
              st.sampled_from(["quoted", "raw", "twice"])),
    st.builds(lambda n, s: s * n, st.integers(50, 3000), st.sampled_from([b"a", b"../", b"%2e%2e/", b"%00"])),
)
paths = st.builds(lambda prefix, segs, tail: prefix.encode() + b"/".join(segs) + tail,
                  st.sampled_from(PREFIXES), st.lists(segment, max_size=6),
                  st.sampled_from([b"", b"/", b"?", b"?x=%00", b"#frag", b".json", b".png"]))


@FUZZ
@given(target=paths, method=st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"POST", b"OPTIONS"]))
def test_generated_paths_never_leave_the_store_or_fail(viewer, target, method):
    reply = send(viewer, method, target)
    check(reply, target)
    if reply.status == 200 and method == b"GET" and target.startswith(b"/artifacts/"):
        digest = hashlib.sha256(reply.body).hexdigest()
        assert digest in viewer.servable, f"{target!r} served bytes that are no file inside the store"


# --- query strings --------------------------------------------------------------------------------------
VALID = {"label": ["", "real", "deepfake", "error"], "sort": ["", "file", "score_desc", "score_asc"],
         "limit": ["1", "50", "500"], "per_page": ["1", "7", "500"], "offset": ["0", "3", "39", "1000000"],
         "page": ["1", "2", "999999"]}
INVALID = {"label": ["fake", "REAL", "real ", "deepfake\x00"], "sort": ["name", "score", "-score"],
           "limit": ["0", "-1", "501", "ten", "1.5", "1e3", "0x10"], "per_page": ["0", "501", "x"],
           "offset": ["-1", "-99999", "x", "1.0"], "page": ["0", "-3", "two", "1/2"]}
NUMBERS = st.integers(-10**30, 10**30).map(str)
wild = st.one_of(st.text(max_size=40), st.sampled_from(XSS), NUMBERS, st.just("9" * 5000),
                 st.sampled_from(["", " ", "%", "%%", "%zz", "\x00", "１２", "+5", " 5 ", "5_0", "nan", "inf"]))


@st.composite
def queries(draw) -> tuple[list[tuple[str, str]], str]:
    """Query parameters and their kind: all ``valid``, one or more ``invalid`` values of the batch query, or
    ``wild`` (anything, including names the viewer does not know and repeated names)."""
    kind = draw(st.sampled_from(["valid", "invalid", "wild"]))
    names = draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=4, unique=True))
    params = [(n, draw(st.sampled_from(VALID[n]))) for n in names]
    if kind == "invalid":
        bad = draw(st.sampled_from(names))
        if bad == "page" and "offset" in names:  # with an offset, the page is not read
            names.remove("offset")
            params = [(n, v) for n, v in params if n != "offset"]
        params = [(n, draw(st.sampled_from(INVALID[n])) if n == bad else v) for n, v in params]
    elif kind == "wild":
        params += draw(st.lists(st.tuples(st.sampled_from([*VALID, "explain", "x", "", "label[]"]), wild),
                                min_size=1, max_size=4))
    return params, kind


def raw_value(value: str) -> bytes:
    """A query value as a careless client sends it: UTF-8 and stray ``%`` as they are; only what would end
    the value or the request line (space, ``&``, ``#``, control bytes) is escaped."""
    out = bytearray()
    for byte in value.encode("utf-8", "surrogatepass"):
        out += b"%%%02X" % byte if byte < 0x21 or byte in b"&#+\x7f" else bytes([byte])
    return bytes(out)


@FUZZ
@given(query=queries(), route=st.sampled_from([f"/api/batches/{BATCH}", f"/batches/{BATCH}",
                                               f"/batches/{BATCH}/results.csv", "/api/batches", "/batches", "/",
                                               "/runs", "/api/runs"]),
       raw=st.booleans())
def test_generated_query_strings_get_an_answer_or_a_400_that_says_why(viewer, query, route, raw):
    params, kind = query
    qs = urlencode(params).encode() if not raw else b"&".join(n.encode() + b"=" + raw_value(v) for n, v in params)
    target = route.encode() + b"?" + qs
    reply = send(viewer, b"GET", target)
    check(reply, target)
    if not target.isascii() and refused_by_waitress(reply):
        return  # raw bytes over 0x7f are no valid request line: waitress's own 400 (checked above) is right
    if route == f"/api/batches/{BATCH}":
        if kind == "valid":
            assert reply.status == 200, (target, reply.body[:300])
            got = json.loads(reply.body)
            assert len(got["rows"]) <= got["limit"] <= viewer.max_page_size
        elif kind == "invalid":
            assert reply.status == 400, (target, reply.body[:300])
        if reply.status == 400:
            message = json.loads(reply.body)["error"]
            assert any(name in message for name in VALID), message  # names the parameter it cannot use
        else:
            assert reply.status == 200, (target, reply.body[:300])
    elif route in (f"/batches/{BATCH}", f"/batches/{BATCH}/results.csv"):
        assert reply.status == 200, (target, reply.body[:300])  # a page falls back to defaults or bounds
        if route.endswith(".csv"):
            assert reply.body.startswith(b"path,"), reply.body[:100]
        else:
            assert reply.body.rstrip().endswith(b"</html>")


# --- headers --------------------------------------------------------------------------------------------
HEADER_NAMES = [b"If-None-Match", b"If-Modified-Since", b"If-Match", b"Range", b"If-Range", b"Accept",
                b"Accept-Encoding", b"Accept-Language", b"Cookie", b"Authorization", b"X-Forwarded-For",
                b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Forwarded", b"Origin", b"Referer", b"User-Agent",
                b"Content-Type", b"Expect", b"Upgrade", b"X-Http-Method-Override", b"Cache-Control"]
header_value = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in b"\r\n")),
    st.text(max_size=60).map(lambda t: t.replace("\r", "").replace("\n", "").encode()),
    st.sampled_from([b"*", b'W/"x"', b'"' + b"a" * 200 + b'"', b"bytes=0-0", b"bytes=-1", b"bytes=9-1,0-",
                     b"bytes=" + b"0-1," * 500, b"Bearer ", b"Basic %%%", b"100-continue", b"websocket",
                     b"Thu, 01 Jan 1970 00:00:00 GMT", b"Sat, 99 Foo 99999 99:99:99 GMT", b"text/html;q=x"]),
    st.builds(lambda n: b"x" * n, st.integers(1000, 20000)),
)
header_name = st.one_of(st.sampled_from(HEADER_NAMES),
                        st.from_regex(rb"\A[A-Za-z][A-Za-z0-9\-]{0,30}\Z").filter(
                            lambda n: n.lower() not in (b"content-length", b"transfer-encoding", b"host",
                                                        b"connection")))


@FUZZ
@given(headers=st.lists(st.tuples(header_name, header_value), max_size=6),
       target=st.sampled_from([b"/", f"/batches/{BATCH}".encode(), f"/batches/{BATCH}/thumb/1.jpg".encode(),
                               f"/artifacts/runs/{REJECTED}/roc.png".encode(), f"/api/batches/{BATCH}".encode(),
                               b"/healthz", b"/classify", f"/batches/{BATCH}/results.csv".encode()]))
def test_generated_headers_never_break_a_response(viewer, headers, target):
    reply = send(viewer, b"GET", target, headers=headers)
    check(reply, (target, headers))
    assert reply.status in (200, 206, 304, 400, 412, 416, 431), (target, headers, reply.status)


# --- uploads --------------------------------------------------------------------------------------------
def image_bytes(i: int, fmt: str) -> bytes:
    pixels = sample_image(i % 8, 40)
    if fmt == "GIF":
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="GIF")
        return buf.getvalue()
    return png_bytes(pixels, fmt)


VALID_IMAGES = [image_bytes(i, fmt) for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])]


def corrupt(data: bytes, how: str, at: int, byte: int) -> bytes:
    """``data`` cut at a point, with a byte changed, or with its header doubled."""
    at = at % max(1, len(data))
    if how == "cut":
        return data[:at]
    if how == "flip":
        return data[:at] + bytes([byte]) + data[at + 1:]
    return data[: max(at, 8)] + data


payload = st.one_of(
    st.sampled_from(VALID_IMAGES).map(lambda d: ("valid", d)),
    st.builds(corrupt, st.sampled_from(VALID_IMAGES), st.sampled_from(["cut", "flip", "double"]),
              st.integers(0, 10**6), st.integers(0, 255)).map(lambda d: ("odd", d)),
    st.binary(max_size=2000).map(lambda d: ("odd", d)),
    st.sampled_from([b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"<svg onload=fuzzq>", b"%!PS-Adobe-3.0 EPSF-3.0",
                     b"<html><script>fuzzq()</script>"]).map(lambda d: ("odd", d)),
    st.builds(lambda n: ("odd", b"\xff\xd8\xff" + b"\x00" * n), st.integers(UPLOAD_LIMIT - 100, UPLOAD_LIMIT + 2000)),
)
filenames = st.one_of(st.none(), st.sampled_from(["x.png", "", "a.jpg", "..\\..\\x.png", "../../etc/passwd",
                                                  "ünï 名前.png", 'q"uote.png', "a;b=c.png", *XSS]),
                      st.text(max_size=30).map(lambda t: t.replace('"', "").replace("\r", "").replace("\n", "")))


@st.composite
def multipart_bodies(draw) -> tuple[bytes, bytes, bool]:
    """A multipart body and its Content-Type; True when it is a well-formed form with one image part."""
    boundary = draw(st.sampled_from([b"fuzzboundary", b"x" * 70, b"'()+_,-./:=?", b"b"]))
    parts = []
    n = draw(st.integers(0, 3))
    well_formed = n == 1
    for _ in range(n):
        name = draw(st.sampled_from([b"image", b"image", b"file", b"token", b"other", b"", b"image\x00"]))
        fname = draw(filenames)
        kind, data = draw(payload)
        disposition = b'form-data; name="' + name + b'"'
        if fname is not None:
            disposition += b'; filename="' + fname.encode("utf-8", "surrogatepass") + b'"'
        ctype = draw(st.sampled_from([b"image/png", b"application/octet-stream", b"text/html", b"", b"x/y; a=\""]))
        head = b"Content-Disposition: " + disposition + (b"\r\nContent-Type: " + ctype if ctype else b"")
        parts.append(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n")
        well_formed &= (name == b"image" and bool(fname) and fname.isprintable() and not set(fname) & set('"\\')
                        and kind == "valid" and n == 1 and len(data) < UPLOAD_LIMIT - 1000)
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    oddity = draw(st.sampled_from(["none", "none", "no-close", "cut", "lf-only", "preamble", "bad-boundary",
                                   "no-boundary"]))
    ctype = b"multipart/form-data; boundary=" + boundary
    if oddity == "no-close":
        body = body[: -len(boundary) - 6]
    elif oddity == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif oddity == "lf-only":
        body = body.replace(b"\r\n", b"\n")
    elif oddity == "preamble":
        body = b"junk before\r\n" + body + b"junk after"
    elif oddity == "bad-boundary":
        ctype = b"multipart/form-data; boundary=other"
    elif oddity == "no-boundary":
        ctype = b"multipart/form-data"
    return body, ctype, well_formed and oddity in ("none", "preamble")


upload_requests = st.one_of(
    multipart_bodies(),
    st.builds(lambda d, c: (d[1], c, False), payload,
              st.sampled_from([b"application/octet-stream", b"image/png", b"application/x-www-form-urlencoded",
                               b"text/plain", b"application/json", b"", b"multipart/mixed; boundary=x"])),
)


# Werkzeug's multipart parser drops the spooled file of a part whose body has no closing boundary without
# closing it; CPython frees it on the spot (refcount), so it is no leak, but its ResourceWarning reaches
# pytest's unraisable-exception hook from the server thread. Only that warning is let through.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function SpooledTemporaryFile.__del__:pytest.PytestUnraisableExceptionWarning")
@FUZZ
@given(request=upload_requests, url=st.sampled_from([b"/api/predict", b"/api/predict?explain=1", b"/classify"]))
def test_generated_uploads_get_a_verdict_or_a_reason(viewer, request, url):
    body, ctype, well_formed = request
    headers = [(b"Content-Type", ctype)] if ctype else []
    reply = send(viewer, b"POST", url, headers=headers, body=body)
    check(reply, (url, ctype, body[:120]))
    if well_formed:
        assert reply.status == 200, (url, reply.body[:300])
    else:
        assert reply.status in (200, 400, 413), (url, ctype, reply.status, reply.body[:300])
    if url.startswith(b"/api/"):
        answer = json.loads(reply.body)
        if reply.status == 200:
            assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"] == CHAMPION
        else:
            assert answer["error"], answer


def test_a_body_declared_over_the_servers_limit_is_refused_before_it_is_sent(viewer):
    """Waitress's own 413 (a Content-Length over the upload limit plus 1 MB, no body sent) is checked like
    every other answer."""
    reply = send(viewer, b"POST", b"/api/predict", headers=[(b"Content-Type", b"multipart/form-data; boundary=b")],
                 content_length=UPLOAD_LIMIT + 1024 * 1024 + 1)
    check(reply, "declared length")
    assert reply.status == 413


def test_a_file_name_longer_than_the_file_system_allows_is_404(viewer):
    """Found by the path fuzz: a 300-byte name under a run folder made the local store's ``exists`` raise
    ENAMETOOLONG, a 500. No such file can exist: 404."""
    for target in (f"/artifacts/runs/{CHAMPION}/{'a' * 300}.png", f"/artifacts/scores/{BATCH}/{'b' * 5000}.csv"):
        reply = send(viewer, b"GET", target.encode())
        check(reply, target[:80])
        assert reply.status == 404, (target[:80], reply.status)


def test_a_request_without_a_body_that_expects_100_continue_is_answered(viewer):
    """Waitress 3.0.2 left such a request unanswered until its idle timeout (120 s); ``app.serve`` skips the
    ``100 Continue`` for a request that is already complete."""
    for target in (b"/", b"/healthz", f"/api/batches/{BATCH}".encode()):
        reply = send(viewer, b"GET", target, headers=[(b"Expect", b"100-continue")])
        check(reply, (target, "Expect: 100-continue"))
        assert reply.status == 200, (target, reply.status)


def test_an_upload_that_waits_for_100_continue_gets_its_verdict(viewer):
    """curl sends ``Expect: 100-continue`` for bodies over 1 KB and waits for ``100 Continue`` before sending
    the body: the server says it, then answers the upload (waited on as events, each bounded by 120 s)."""
    body, ctype = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
                   + VALID_IMAGES[0] + b"\r\n--b--\r\n"), b"multipart/form-data; boundary=b"
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nExpect: 100-continue\r\n"
            b"Content-Type: " + ctype + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection((viewer.host, viewer.port), timeout=120) as sock:
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, f"the connection closed before 100 Continue: {interim!r}"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        reply = Reply(resp.status, resp.headers, resp.read())
        resp.close()
    check(reply, "upload after 100 Continue")
    assert reply.status == 200 and 0.0 <= json.loads(reply.body)["score"] <= 1.0


def test_the_fuzz_oracles_can_fail(viewer):
    """The checks above are not vacuous: a served plot is a file of the store, the symlinks to the canary
    exist, and an unknown batch id is reflected in the error page (escaped)."""
    plot = send(viewer, b"GET", f"/artifacts/runs/{REJECTED}/roc.png".encode())
    assert plot.status == 200 and hashlib.sha256(plot.body).hexdigest() in viewer.servable
    assert CANARY in (viewer.root / "artifacts" / "runs" / REJECTED / "leak.json").read_text()
    page = send(viewer, b"GET", b"/batches/" + quote("<fuzzq>").encode())
    assert page.status == 404 and b"&lt;fuzzq&gt;" in page.body
    check(page, "unknown batch")


def test_a_thread_moving_the_global_random_state_breaks_no_fuzz_test():
    """Every draw of two of this module's strategies (paths, and uploads, whose repr is huge) waits mid-draw
    for another thread to call ``random.random()``, as distributed's IO loop or a Keras load in a server thread
    may at any moment: the examples are still generated and replayed, without a warning turned error or a
    FlakyStrategyDefinition (the CI failure of stop 22). Without either of this module's ``pytestmark``
    filters the first example fails."""
    asked, moved, stop = threading.Event(), threading.Event(), threading.Event()

    def mover() -> None:
        while not stop.is_set():
            if asked.wait(0.1):
                asked.clear()
                random.random()
                moved.set()

    def another_thread_moves_random() -> int:
        asked.set()
        assert moved.wait(120), "waited 120 s for the other thread to call random.random()"
        moved.clear()
        return 0

    drawn: list[bytes] = []

    @settings(FUZZ, max_examples=20)
    @given(target=st.builds(lambda t, _: t, paths, st.builds(another_thread_moves_random)),
           request=st.builds(lambda r, _: r, upload_requests, st.builds(another_thread_moves_random)))
    def draw(target: bytes, request: tuple[bytes, bytes, bool]) -> None:
        drawn.append(target)
        assert isinstance(request[0], bytes)

    thread = threading.Thread(target=mover, name="random-mover", daemon=True)
    thread.start()
    try:
        draw()
    finally:
        stop.set()
        thread.join(timeout=120)
    assert len(drawn) == 20 and all(isinstance(t, bytes) and t.startswith(b"/") for t in drawn)
