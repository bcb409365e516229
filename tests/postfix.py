"""A throw-away Postfix instance for tests, in a temporary directory.

Everything (configuration, queue, data, log, mailboxes) lives under one
directory, so the system's own Postfix is never touched. Start-up takes a
fraction of a second because the generated files are backdated (Postfix
waits for main.cf to be two seconds old) and the queue directories are
made here instead of by ``postfix set-permissions``.
"""

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "postfix"

_QUEUE_DIRS = {
    # name: (owner is the mail owner, group postdrop, mode)
    "active": (True, False, 0o700),
    "bounce": (True, False, 0o700),
    "corrupt": (True, False, 0o700),
    "defer": (True, False, 0o700),
    "deferred": (True, False, 0o700),
    "flush": (True, False, 0o700),
    "hold": (True, False, 0o700),
    "incoming": (True, False, 0o700),
    "private": (True, False, 0o700),
    "saved": (True, False, 0o700),
    "trace": (True, False, 0o700),
    "maildrop": (True, True, 0o730),
    "public": (True, True, 0o710),
    "pid": (False, False, 0o755),
}

_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@dataclass
class Postfix:
    root: Path
    port: int
    mailboxes: tuple[str, ...]

    @property
    def log(self) -> str:
        path = self.root / "log" / "postfix.log"
        return path.read_text() if path.exists() else ""

    def delivered(self, user: str) -> list[bytes]:
        new = self.root / "mail" / user / "new"
        if not new.is_dir():
            return []
        return [path.read_bytes() for path in sorted(new.iterdir())]

    def wait_for_delivery(
        self, user: str, count: int, timeout: float = 10.0
    ) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.delivered(user)
            if len(messages) >= count:
                return messages
            time.sleep(0.05)
        raise AssertionError(
            f"{user} got {len(self.delivered(user))} messages, not {count}\n"
            + self.log[-3000:]
        )

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the Postfix log:\n{self.log[-3000:]}")

    def stop(self) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.root / "etc"), "stop"],
            capture_output=True,
            check=False,
        )


def start_postfix(
    root: Path, mailboxes: tuple[str, ...], extra_main: str = ""
) -> Postfix:
    """Write a complete instance under ``root`` and start it; ``extra_main``
    is appended to main.cf."""
    if shutil.which("postfix") is None:
        raise RuntimeError("Postfix is not installed: apt-get install postfix")
    root.chmod(0o755)
    port = free_port()
    owner = pwd.getpwnam("postfix")
    postdrop = grp.getgrnam("postdrop").gr_gid
    nobody = pwd.getpwnam("nobody")

    etc, queue, data, log, mail = (
        root / n for n in ("etc", "queue", "data", "log", "mail")
    )
    for folder in (etc, queue, log, mail):
        folder.mkdir(mode=0o755)
    data.mkdir(mode=0o700)
    os.chown(data, owner.pw_uid, owner.pw_gid)
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    for name, (mail_owned, group_postdrop, mode) in _QUEUE_DIRS.items():
        path = queue / name
        path.mkdir()
        os.chown(
            path,
            owner.pw_uid if mail_owned else 0,
            postdrop if group_postdrop else (owner.pw_gid if mail_owned else 0),
        )
        path.chmod(mode)

    mailbox_map = ", ".join(f"{box}@example.com={box}/" for box in mailboxes)
    (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = backend.test
mydomain = backend.test
myorigin = backend.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
smtpd_banner = $myhostname ESMTP
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_transport = discard
relay_transport = discard
virtual_mailbox_domains = example.com
virtual_mailbox_base = {mail}
virtual_mailbox_maps = inline:{{ {mailbox_map} }}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_minimum_uid = 1
maillog_file = {log}/postfix.log
maillog_file_prefixes = {root}
biff = no
{extra_main}
""")
    (etc / "master.cf").write_text(_listener(port) + _SERVICES)

    # Postfix waits for main.cf to be two seconds old: backdate the files.
    past = time.time() - 60
    for path in etc.iterdir():
        os.utime(path, (past, past))

    result = subprocess.run(
        ["postfix", "-c", str(etc), "start"], capture_output=True, text=True
    )
    instance = Postfix(root, port, mailboxes)
    if result.returncode != 0:
        raise RuntimeError(f"postfix start failed: {result.stderr}\n{instance.log}")
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        instance.stop()
        raise RuntimeError(f"postfix did not listen:\n{instance.log}") from None
    return instance


def _listener(port: int) -> str:
    """The service of contrib/postfix/master.cf, on a test port, unchrooted."""
    lines = [
        line
        for line in (CONTRIB / "master.cf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    head = lines[0].split()
    head[0] = f"127.0.0.1:{port}"
    head[4] = "n"  # chroot would need copies of system files
    return "\n".join(["  ".join(head), *lines[1:]]) + "\n"
