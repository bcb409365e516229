"""Logging set-up: logfmt lines on stderr.

Every module logs through ``logging.getLogger(__name__)``. Lines that
operators grep (decisions, the start-up summary) carry their fields as
``extra`` keys, which the logfmt formatter writes as ``key=value``.
"""

import logging
import sys

from logfmter import Logfmter


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        Logfmter(
            keys=["ts", "at", "logger"],
            mapping={"ts": "asctime", "at": "levelname", "logger": "name"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every client command at INFO; greygeo logs decisions.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
