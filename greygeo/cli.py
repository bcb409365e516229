"""The ``greygeo`` command: serve, check, migrate, purge, stats.

Exit codes are part of the contract scripts rely on: ``check`` exits 0 when
the recipient would be accepted, 1 when refused, and every command exits 2
on a bad configuration or bad arguments, with a one-line message and no
traceback.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from greygeo import __version__
from greygeo.config import Config, ConfigError, load_config
from greygeo.daemon import StartupError, serve
from greygeo.logs import setup_logging
from greygeo.lookups.geoip import CountryLookup, GeoipError
from greygeo.lookups.store import Store, StoreError
from greygeo.rules import greylist
from greygeo.rules.engine import Verdict, decide
from greygeo.rules.facts import Facts, plain_address
from greygeo.rules.schedule import policy_at

EXIT_ACCEPTED = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greygeo",
        description="Greylisting-plus-geo SMTP policy daemon (inline SMTP proxy).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", required=True, help="the TOML file")
        return sub

    serve_cmd = command("serve", "run the SMTP proxy")
    serve_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    check = command("check", "show the decision for one recipient, rule by rule")
    check.add_argument("--client", required=True, help="client IP address")
    check.add_argument("--helo", default="", help="HELO/EHLO name")
    check.add_argument("--sender", default="", help="envelope sender (empty: <>)")
    check.add_argument("--recipient", default="", help="envelope recipient")
    check.add_argument(
        "--at",
        help="evaluate as of this time (ISO 8601; without an offset, "
        "in the schedule's zone), e.g. 2026-12-03T23:30",
    )

    command("schedule", "list the periods, the one in force and the next switches")

    command("migrate", "create or upgrade the store")

    purge = command("purge", "delete expired triplets, clients and limit keys")
    purge.add_argument("--dry-run", action="store_true", help="only count")

    stats = command("stats", "print what the store holds")
    stats.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            setup_logging(args.log_level)
            asyncio.run(serve(config))
            return 0
        return asyncio.run(_COMMANDS[args.command](config, args))
    except (ConfigError, StartupError, GeoipError, StoreError) as error:
        print(f"greygeo: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (``greygeo stats | head``): nothing to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_REFUSED


async def check(config: Config, args: argparse.Namespace) -> int:
    """Print the decision for one recipient; change no state."""
    try:
        client = plain_address(args.client)
    except ValueError:
        print(f"greygeo: --client: not an IP address: {args.client!r}", file=sys.stderr)
        return EXIT_USAGE

    countries = CountryLookup(config.geoip.database)
    facts = Facts(
        client=client,
        country=countries.country(client),
        helo=args.helo,
        sender=_bare(args.sender),
        recipient=_bare(args.recipient),
        transaction="check",
    )
    countries.close()
    try:
        instant = _instant(args.at, config)
        instant.astimezone(UTC)  # far from now, some zones cannot say
    except (ValueError, OverflowError):
        print(f"greygeo: --at: not a date and time: {args.at!r}", file=sys.stderr)
        return EXIT_USAGE
    now = instant.timestamp()
    policy, periods = policy_at(config.policy, config.schedule, instant)
    store = await Store.open_read_only(config.store.path)
    try:
        decision = await decide(policy, facts, now, store, commit=False)
        triplet = await greylist.describe(store, facts, now, policy.greylist)
    finally:
        await store.close()

    print(f"client     {facts.client} (country {facts.country})")
    print(f"helo       {facts.helo or '(none)'}")
    print(f"sender     <{facts.sender}>")
    print(f"recipient  <{facts.recipient}>")
    print(f"as of      {instant.isoformat(timespec='seconds')}")
    print(f"period     {', '.join(periods) or '(none: base rules)'}")
    print(f"greylist   {triplet}")
    print("rules:")
    width = max((len(step.rule) for step in decision.steps), default=0)
    for step in decision.steps:
        print(f"  {step.rule:<{width}}  {step.outcome}")
    reply = f" reply={decision.reply}" if decision.reply else ""
    print(f"decision: {decision.verdict} rule={decision.rule}{reply}")
    return EXIT_ACCEPTED if decision.verdict is Verdict.ACCEPT else EXIT_REFUSED


def _bare(address: str) -> str:
    """An address as the daemon keeps it: ``<a@b>`` is ``a@b``, ``<>`` empty."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def _instant(text: str | None, config: Config) -> datetime:
    """``--at`` as an aware instant; now when not given."""
    zone = config.schedule.zone
    if text is None:
        return datetime.now(zone)
    instant = datetime.fromisoformat(text)
    return instant if instant.tzinfo else instant.replace(tzinfo=zone)


async def schedule(config: Config, args: argparse.Namespace) -> int:
    """The periods, which are in force now, and when that changes next."""
    plan = config.schedule
    now = datetime.now(plan.zone)
    print(f"time zone  {plan.zone.key}, now {now.isoformat(timespec='seconds')}")
    if not plan.periods:
        print("no periods: the base rules apply at all times")
        return 0
    active = {period.name for period in plan.active(now)}
    print("periods:")
    for period in plan.periods:
        mark = "  (in force)" if period.name in active else ""
        print(f"  {period.name:<16} {period.describe()}{mark}")
    print("next switches:")
    for moment in plan.next_switches(now):
        names = [p.name for p in plan.active(moment)]
        print(
            f"  {moment.isoformat(timespec='seconds')}  -> "
            f"{', '.join(names) or 'base rules'}"
        )
    return 0


async def migrate(config: Config, args: argparse.Namespace) -> int:
    store = await Store.open(config.store.path, config.store.lock_timeout)
    version = await store.schema_version()
    await store.close()
    print(f"store {config.store.path} is at schema version {version}")
    return 0


async def purge(config: Config, args: argparse.Namespace) -> int:
    """Delete (or with --dry-run count) what has expired; safe while serving."""
    if args.dry_run:
        store = await Store.open_existing(config.store.path)
    else:
        store = await Store.open(config.store.path, config.store.lock_timeout)
    try:
        removed = await store.purge(
            time.time(), config.policy.greylist, dry_run=args.dry_run
        )
    finally:
        await store.close()
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb}: " + ", ".join(f"{count} {kind}" for kind, count in removed.items()))
    return 0


async def stats(config: Config, args: argparse.Namespace) -> int:
    store = await Store.open_existing(config.store.path)
    try:
        figures = await store.stats(config.policy.greylist)
    finally:
        await store.close()
    oldest = figures["oldest_entry"]
    if isinstance(oldest, float):
        figures["oldest_entry"] = datetime.fromtimestamp(oldest, UTC).isoformat()
    figures["store"] = str(config.store.path)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:<21} {value if value is not None else '-'}")
    return 0


_COMMANDS = {
    "check": check,
    "migrate": migrate,
    "purge": purge,
    "stats": stats,
    "schedule": schedule,
}
