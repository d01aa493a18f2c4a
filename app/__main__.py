"""``python -m app``: serve the viewer under waitress (see :mod:`app.serve`)."""

from app.serve import main

raise SystemExit(main())
