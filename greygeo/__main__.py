"""Allows ``python -m greygeo``."""

from greygeo.cli import main

raise SystemExit(main())
