"""``python -m bluesky_recorders`` is ``bsrec``."""

from .cli import main

raise SystemExit(main())
