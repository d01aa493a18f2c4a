"""Run the viewer under waitress, a production WSGI server, bound to 127.0.0.1 unless told otherwise.

``python -m app [--host 127.0.0.1] [--port 8000] [--threads 8]`` (or ``dfd-viewer``, ``make viewer``);
configuration comes from the environment (``ARTIFACTS_URL``, ``VIEWER_TOKEN``, ... see :mod:`app.config`).
Debug mode is never on here. Flask and the app are imported after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
from typing import Any


def parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    """The viewer's options; each default is the environment variable's value, else the built-in one."""
    from dfd.settings import ViewerSettings

    v = ViewerSettings.from_env()
    p = argparse.ArgumentParser(prog=prog, description="Serve the deepfake viewer (waitress).", allow_abbrev=False)
    p.add_argument("--host", default=v.host,
                   help=f"interface to bind; 0.0.0.0 only behind a proxy (default: $VIEWER_HOST or {v.host})")
    p.add_argument("--port", type=int, default=v.port, help=f"port (default: $VIEWER_PORT or {v.port})")
    p.add_argument("--threads", type=int, default=v.threads,
                   help=f"waitress worker threads (default: $VIEWER_THREADS or {v.threads})")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m app") -> int:
    """Serve the viewer until interrupted (``prog`` names the command in ``--help`` and errors)."""
    args = parser(prog).parse_args(argv)
    from app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_big_buffers()
    app = create_app()
    if app.debug:  # create_app never enables it outside tests; refuse rather than expose a debugger
        raise SystemExit("refusing to serve with debug mode on")
    print(f"viewer on http://{args.host}:{args.port}/ reading {app.config['ARTIFACTS_URL']}", flush=True)
    make_server(app, host=args.host, port=args.port, threads=args.threads).run()
    return 0


def return_big_buffers(threshold: int = 1 << 20) -> bool:
    """Have glibc map every allocation of ``threshold`` bytes or more on its own, so a decoded upload goes
    back to the system when freed instead of staying in the malloc arena of the thread that decoded it.

    Without it, uploads decoded by different server threads each leave their peak behind (measured with
    ``bench/viewer_big_upload.py``: 8 uploads of 36 MP peaked at 2.5 GB instead of 1.5 GB). Skipped when
    ``MALLOC_MMAP_THRESHOLD_`` is set or the C library is not glibc; returns whether it was applied.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        return False


def make_server(app: Any, **kw: Any) -> Any:
    """The waitress server for ``app`` (``kw``: waitress adjustments such as host, port, threads).

    Waitress answers some requests itself, before the app sees them: a body over ``max_request_body_size``
    (the upload limit plus 1 MB of form overhead) gets its own 413, malformed requests a 400. Its channels are
    given an error task that adds the app's security headers (:data:`app.SECURITY_HEADERS`) to those too.
    """
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer, create_server
    from waitress.task import ErrorTask

    from app import SECURITY_HEADERS

    class SecureErrorTask(ErrorTask):
        """Waitress's own error response, with the security headers."""

        def execute(self) -> None:
            self.response_headers.extend(SECURITY_HEADERS.items())
            super().execute()

    class SecureChannel(HTTPChannel):
        """A connection whose errors go through :class:`SecureErrorTask`."""

        error_task_class = SecureErrorTask

        def send_continue(self) -> None:
            """Waitress 3.0.2 answers ``Expect: 100-continue`` with ``100 Continue`` and then marks the request
            as waiting for its body, even when it has none and is complete: such a request was never answered
            (found by tests/test_viewer_fuzz.py). A complete request needs no ``100 Continue``."""
            if self.request is not None and self.request.completed:
                self.request.expect_continue = False
                return
            super().send_continue()

    kw.setdefault("ident", "dfd-viewer")
    kw.setdefault("max_request_body_size", int(app.config["MAX_CONTENT_LENGTH"]) + 1024 * 1024)
    servers: dict[Any, Any] = {}
    server = create_server(app, map=servers, **kw)
    for listener in list(servers.values()):
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = SecureChannel
    return server


if __name__ == "__main__":
    raise SystemExit(main())
