"""The built-in Maildir backend: accepted mail is written to a Maildir.

It serves the quick start and tests that need no MTA. Delivery is real:
the file is written and flushed to disk (file and directory fsync'd) before
the client hears 250. Writing runs in a worker thread so a slow disk never
blocks the event loop.
"""

import asyncio
import email.utils
import logging
import mailbox
import os
from pathlib import Path

from greygeo.frontends.backend import Answer, BackendError, Relay
from greygeo.frontends.client_identity import ClientInfo

log = logging.getLogger(__name__)

WRITE_FAILED = Answer(451, "4.3.0 Local delivery failed, try again later")


class MaildirBackend:
    def __init__(self, path: Path, hostname: str) -> None:
        self.path = path
        self.hostname = hostname
        self.description = f"maildir:{path}"

    async def probe(self) -> None:
        """Create the Maildir (or the folders an empty one lacks) now, so
        that a bad path fails at start."""
        try:
            for folder in ("tmp", "new", "cur"):
                (self.path / folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendError(
                f"cannot use {self.path} as a Maildir: {error}", WRITE_FAILED
            ) from error

    async def open(
        self, client: ClientInfo, sender: str, options: list[str]
    ) -> tuple[Relay | None, Answer]:
        relay = MaildirRelay(self, client, sender)
        return relay, Answer(250, "2.1.0 Ok")


class MaildirRelay:
    def __init__(self, backend: MaildirBackend, client: ClientInfo, sender: str):
        self.backend = backend
        self.client = client
        self.sender = sender
        self.recipients: list[str] = []

    async def recipient(self, address: str, options: list[str]) -> Answer:
        self.recipients.append(address)
        return Answer(250, "2.1.5 Ok")

    async def data(self, content: bytes) -> Answer:
        message = self._trace_headers() + content
        try:
            key = await asyncio.to_thread(self._deliver, message)
        except OSError as error:
            log.warning(
                "maildir delivery failed path=%s error=%s", self.backend.path, error
            )
            return WRITE_FAILED
        return Answer(250, f"2.0.0 Ok: delivered as {key}")

    async def close(self) -> None:
        return None

    def _trace_headers(self) -> bytes:
        """Return-Path, Delivered-To and Received, as a delivery agent adds."""
        lines = [f"Return-Path: <{self.sender}>"]
        lines += [f"Delivered-To: {recipient}" for recipient in self.recipients]
        lines.append(
            f"Received: from {self.client.helo} ([{self.client.address}])\r\n"
            f"\tby {self.backend.hostname} (greygeo);\r\n"
            f"\t{email.utils.formatdate(localtime=True)}"
        )
        return "".join(line + "\r\n" for line in lines).encode(
            "utf-8", "surrogateescape"
        )

    def _deliver(self, message: bytes) -> str:
        """Write one message and flush it to disk; returns its key."""
        box = mailbox.Maildir(self.backend.path, create=True)
        key = box.add(message.replace(b"\r\n", b"\n"))
        new = self.backend.path / "new"
        fd = os.open(new / key, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(new, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return key
