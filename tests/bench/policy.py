"""Postfix policy decisions per second: greygeo beside postgrey, in one run.

    python tests/bench/policy.py [--seconds 5]

Starts postgrey (Debian's package) and greygeo (a greylist rule only, the
store on disk), then for 1, 4 and 16 persistent connections sends
``protocol_state=RCPT`` requests as fast as each answers, every one a new
triplet, and prints decisions per second for both and the ratio.
Needs root (postgrey drops privileges to its own user) and postgrey.
"""

import argparse
import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.postfix import free_port, wait_for_port

CONNECTIONS = (1, 4, 16)


def request(n: int) -> bytes:
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        f"client_address=10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}\n"
        f"client_name=unknown\nhelo_name=mx{n}.test\nsender=s{n}@sender.test\n"
        f"recipient=r{n}@example.com\ninstance={n}.1\n\n"
    ).encode()


async def load(port: int, connections: int, seconds: float, start: int) -> int:
    end = time.perf_counter() + seconds
    counts = [0] * connections

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = start + index * 10_000_000
        while time.perf_counter() < end:
            writer.write(request(n))
            await reader.readuntil(b"\n\n")
            counts[index] += 1
            n += 1
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return sum(counts)


def start_postgrey(folder: Path, port: int) -> subprocess.Popen[bytes]:
    dbdir = folder / "postgrey"
    dbdir.mkdir()
    user = pwd.getpwnam("postgrey")
    os.chown(dbdir, user.pw_uid, user.pw_gid)
    postgrey = shutil.which("postgrey") or "/usr/sbin/postgrey"
    process = subprocess.Popen(
        [
            postgrey,
            f"--inet=127.0.0.1:{port}",
            f"--dbdir={dbdir}",
            f"--pidfile={folder / 'postgrey.pid'}",
        ],
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return process


def start_greygeo(folder: Path, port: int) -> subprocess.Popen[bytes]:
    (folder / "greygeo.toml").write_text(f"""
[proxy]
listen = ["127.0.0.1:{free_port()}"]
hostname = "mx.bench.test"
[backend]
address = "maildir:{folder / "mail"}"
[store]
path = "{folder / "greygeo.sqlite3"}"
[policy]
listen = ["127.0.0.1:{port}"]
[[rules]]
name = "GREYLIST"
action = "greylist"
""")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "greygeo",
            "serve",
            "--log-level",
            "warning",
            "--config",
            str(folder / "greygeo.toml"),
        ],
    )
    wait_for_port("127.0.0.1", port)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="greygeo-bench-"))
    folder.chmod(0o755)  # postgrey's user must reach its dbdir
    greygeo_port, postgrey_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_greygeo(folder, greygeo_port))
        processes.append(start_postgrey(folder, postgrey_port))
        print(f"policy decisions per second, new triplets, {args.seconds:g} s each")
        print("  connections   greygeo   postgrey   ratio")
        for round_, connections in enumerate(CONNECTIONS):
            start = round_ * 1_000_000_000
            ours = asyncio.run(load(greygeo_port, connections, args.seconds, start))
            theirs = asyncio.run(load(postgrey_port, connections, args.seconds, start))
            print(
                f"  {connections:>11}   {ours / args.seconds:7.0f}   "
                f"{theirs / args.seconds:8.0f}   {ours / max(theirs, 1):5.2f}"
            )
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
