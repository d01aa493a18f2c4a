"""Run the viewer under waitress, a production WSGI server, bound to 127.0.0.1 unless told otherwise.

``python -m app [--host 127.0.0.1] [--port 8000] [--threads 8]``; configuration comes from the environment
(``ARTIFACTS_URL``, ``VIEWER_TOKEN``, ... see :mod:`app.config`). Debug mode is never on here.
"""

from __future__ import annotations

import argparse
import logging
import os

from app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve the deepfake viewer (waitress).")
    parser.add_argument("--host", default=os.environ.get("VIEWER_HOST", "127.0.0.1"),
                        help="interface to bind (default 127.0.0.1; use 0.0.0.0 only behind a proxy)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("VIEWER_PORT", "8000")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("VIEWER_THREADS", "8")))
    args = parser.parse_args(argv)

    from waitress import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app()
    if app.debug:  # create_app never enables it outside tests; refuse rather than expose a debugger
        raise SystemExit("refusing to serve with debug mode on")
    print(f"viewer on http://{args.host}:{args.port}/ reading {app.config['ARTIFACTS_URL']}", flush=True)
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="dfd-viewer",
          max_request_body_size=int(app.config["MAX_CONTENT_LENGTH"]) + 1024 * 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
