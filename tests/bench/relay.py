"""Relay throughput and latency: greygeo in front of a sink, against the sink.

Starts Postfix's ``smtp-sink`` (a fast discard server) and greygeo in front
of it (XCLIENT on, the recipe's rules, every client in Japan so the first
rule accepts), then runs the same load twice in one run: straight to the
sink, and through greygeo. Each client connection sends one message
(connect, EHLO, MAIL, RCPT, DATA, QUIT), as an MX sees them.

Two measurements per load, because one Python load generator cannot drive
the sink at its full speed on two cores:

- throughput: Postfix's ``smtp-source`` (C) sends a fixed number of
  messages over N parallel sessions; transactions per second is that number
  over the wall time, and the ratio greygeo/direct is the headline figure;
- latency: an asyncio client in this process runs N concurrent loops for a
  fixed time and records every transaction's time from connect to the
  reply to QUIT; it prints p50 and p99.

    python tests/bench/relay.py                      # both standard loads
    python tests/bench/relay.py --clients 50 --size 4096 --seconds 5

Needs root (smtp-sink drops privileges to nobody) and Postfix installed.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.harness import RECIPE_RULES
from tests.postfix import free_port, wait_for_port

# (message size, concurrent clients, messages for the throughput run)
STANDARD_LOADS = [(1024, 100, 20_000), (1024 * 1024, 10, 1_000)]


@dataclass
class Result:
    transactions: int
    failures: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def message_of(size: int) -> bytes:
    header = b"Subject: bench\r\nFrom: a@sender.test\r\nTo: b@example.com\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body + b".\r\n"


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise ConnectionError(line)
        if line[3:4] != b"-":
            return


async def one_transaction(port: int, source: str, message: bytes) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0)
    )
    try:
        await expect(reader, b"220")
        writer.write(b"EHLO bench.sender.test\r\n")
        await expect(reader, b"250")
        writer.write(b"MAIL FROM:<a@sender.test>\r\n")
        await expect(reader, b"250")
        writer.write(b"RCPT TO:<b@example.com>\r\n")
        await expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await expect(reader, b"354")
        writer.write(message)
        await expect(reader, b"250")
        writer.write(b"QUIT\r\n")
        await expect(reader, b"221")
    finally:
        writer.close()


async def load(port: int, clients: int, size: int, seconds: float) -> Result:
    """``clients`` loops, each sending one message per connection."""
    message = message_of(size)
    latencies: list[float] = []
    failures = 0
    warmup_end = time.perf_counter() + 1.0
    end = warmup_end + seconds

    async def client(number: int) -> None:
        nonlocal failures
        source = f"127.0.2.{number % 250 + 1}"
        while (now := time.perf_counter()) < end:
            try:
                await one_transaction(port, source, message)
            except (OSError, ConnectionError):
                failures += 1
                continue
            done = time.perf_counter()
            if now >= warmup_end:
                latencies.append(done - now)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return Result(len(latencies), failures, seconds, latencies)


def run_load(port: int, clients: int, size: int, seconds: float) -> Result:
    return asyncio.run(load(port, clients, size, seconds))


def throughput(port: int, clients: int, size: int, messages: int) -> float:
    """Messages per second that smtp-source gets through, one per session."""
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    started = time.perf_counter()
    subprocess.run(
        [
            source,
            "-s",
            str(clients),
            "-l",
            str(size),
            "-m",
            str(messages),
            "-f",
            "a@sender.test",
            "-t",
            "b@example.com",
            "-M",
            "bench.sender.test",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return messages / (time.perf_counter() - started)


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    process = subprocess.Popen(
        [sink, "-u", "nobody", "-m", "1000", f"127.0.0.1:{port}", "1000"]
    )
    wait_for_port("127.0.0.1", port)
    return process


def start_greygeo(folder: Path, port: int, sink_port: int) -> subprocess.Popen[bytes]:
    writer = MMDBWriter(
        ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True
    )
    writer.insert_network(IPSet(["127.0.0.0/8"]), {"country": {"iso_code": "JP"}})
    writer.to_db_file(str(folder / "bench.mmdb"))
    (folder / "greygeo.toml").write_text(f"""
[proxy]
listen = ["127.0.0.1:{port}"]
hostname = "mx.bench.test"
[backend]
address = "127.0.0.1:{sink_port}"
client_identity = "xclient"
[geoip]
database = "{folder / "bench.mmdb"}"
[store]
path = "{folder / "greygeo.sqlite3"}"
{RECIPE_RULES}
""")
    log = (folder / "greygeo.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "greygeo",
            "serve",
            "--config",
            str(folder / "greygeo.toml"),
        ],
        stderr=log,
    )
    wait_for_port("127.0.0.1", port)
    return process


def report(label: str, result: Result) -> None:
    p50 = result.percentile(0.5) * 1000
    p99 = result.percentile(0.99) * 1000
    print(
        f"    {label:<8} {result.rate:9.1f} tx/s   p50 {p50:7.1f} ms"
        f"   p99 {p99:7.1f} ms   failures {result.failures}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, help="concurrent clients")
    parser.add_argument("--size", type=int, help="message size in bytes")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run")
    args = parser.parse_args()
    loads = STANDARD_LOADS
    if args.clients or args.size:
        size = args.size or 1024
        loads = [(size, args.clients or 100, max(100, 20_000_000 // size))]

    folder = Path(tempfile.mkdtemp(prefix="greygeo-bench-"))
    sink_port, proxy_port = free_port(), free_port()
    sink = start_sink(sink_port)
    greygeo = start_greygeo(folder, proxy_port, sink_port)
    try:
        print(f"cores: {os.cpu_count()}, {args.seconds:g} s per run after 1 s warm-up")
        for size, clients, messages in loads:
            print(f"{size} byte messages, {clients} clients:")
            direct_rate = throughput(sink_port, clients, size, messages)
            proxied_rate = throughput(proxy_port, clients, size, messages)
            print(f"  throughput ({messages} messages by smtp-source):")
            print(f"    direct   {direct_rate:9.1f} tx/s")
            print(f"    greygeo  {proxied_rate:9.1f} tx/s")
            print(f"    ratio    {proxied_rate / direct_rate:.2f} of the direct rate")
            print(f"  latency ({args.seconds:g} s of the asyncio client):")
            report("direct", run_load(sink_port, clients, size, args.seconds))
            report("greygeo", run_load(proxy_port, clients, size, args.seconds))
    finally:
        greygeo.terminate()
        greygeo.wait(30)
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
