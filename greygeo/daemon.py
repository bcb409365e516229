"""``greygeo serve``: wiring the parts together and running the listeners.

Start-up opens everything that can fail (GeoIP file, store, TLS files, the
listening sockets, a first look at the backend) before the first client is
served, and logs one summary line. SIGTERM and SIGINT stop the listeners
and give sessions in progress a grace period to finish.
"""

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from greygeo.config import Config, ConfigError, load_config, parse_endpoint
from greygeo.frontends.auth_http import AuthHttpService, backend_for_nginx
from greygeo.frontends.backend import Backend, BackendError, SmtpBackend
from greygeo.frontends.deciding import Decider
from greygeo.frontends.maildir import MaildirBackend
from greygeo.frontends.policy import MAX_REQUEST, PolicyService
from greygeo.frontends.protocol import ProxyServer
from greygeo.frontends.smtp import ProxyHandler
from greygeo.lookups.geoip import CountryLookup, GeoipError
from greygeo.lookups.store import Store, StoreError
from greygeo.rules.schedule import changes, policy_at

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 30.0


class StartupError(Exception):
    """greygeo cannot start; the message says why."""


@dataclass
class Daemon:
    """A running greygeo: its listeners and the parts they share."""

    config: Config
    handler: ProxyHandler
    store: Store
    countries: CountryLookup
    clock: Callable[[], float] = time.time
    servers: list[asyncio.Server] = field(default_factory=list)
    policy_servers: list[asyncio.Server] = field(default_factory=list)
    policy_service: PolicyService | None = None
    web_runner: web.AppRunner | None = None
    scheduler: AsyncIOScheduler | None = None
    periods: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the listeners are bound (useful when a port was 0)."""
        return [
            sock.getsockname()[:2] for server in self.servers for sock in server.sockets
        ]

    def start_jobs(self) -> None:
        """Purge every ``purge_every``; switch the schedule's periods."""
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_job(
            self.purge,
            IntervalTrigger(seconds=self.config.policy.greylist.purge_every),
            id="purge",
            coalesce=True,
            max_instances=1,
        )
        self._schedule_switches()
        self.scheduler.start()

    def _schedule_switches(self) -> None:
        """A job at every period boundary, in the schedule's zone, and one a
        minute as a safety net: switching recomputes the periods from the
        clock, so a job that fires twice or late changes nothing."""
        assert self.scheduler is not None
        for job in self.scheduler.get_jobs():
            if job.id.startswith("switch"):
                job.remove()
        schedule = self.config.schedule
        for n, moment in enumerate(schedule.boundaries()):
            trigger = CronTrigger(
                hour=moment.hour,
                minute=moment.minute,
                second=moment.second,
                timezone=schedule.zone,
            )
            self.scheduler.add_job(
                self.switch,
                trigger,
                id=f"switch-{n}",
                coalesce=True,
                misfire_grace_time=60,
            )
        if schedule.periods:
            self.scheduler.add_job(
                self.switch,
                IntervalTrigger(minutes=1),
                id="switch-check",
                coalesce=True,
            )

    def switch(self) -> None:
        """Put in force the policy of the periods active now."""
        instant = datetime.fromtimestamp(self.clock(), UTC)
        policy, names = policy_at(self.config.policy, self.config.schedule, instant)
        if names == self.periods and policy == self.handler.decider.policy:
            return
        log.info(
            "schedule switch",
            extra={
                "from": ",".join(self.periods) or "base",
                "to": ",".join(names) or "base",
                "changes": " ".join(changes(self.handler.decider.policy, policy))
                or "none",
            },
        )
        self.periods = names
        self.handler.decider.policy = policy

    def reload(self) -> bool:
        """Re-read the config file; swap in the new policy and schedule at
        once, or keep the old ones and say why. Sessions go on."""
        try:
            new = load_config(self.config.source)
        except ConfigError as error:
            log.warning("reload failed, the old config stays error=%s", error)
            return False
        kept = [
            name
            for name in ("proxy", "backend", "geoip", "store")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if kept:
            log.warning(
                "reload applies rules and schedule only; restart for changes to %s",
                ", ".join(kept),
            )
        self.config = replace(self.config, policy=new.policy, schedule=new.schedule)
        instant = datetime.fromtimestamp(self.clock(), UTC)
        self.handler.decider.policy, self.periods = policy_at(
            new.policy, new.schedule, instant
        )
        if self.scheduler is not None:
            self._schedule_switches()
            self.scheduler.reschedule_job(
                "purge",
                trigger=IntervalTrigger(seconds=new.policy.greylist.purge_every),
            )
        log.info(
            "reloaded",
            extra={
                "rules": len(new.policy.rules),
                "periods": ",".join(self.periods) or "base",
            },
        )
        return True

    async def purge(self) -> dict[str, int]:
        """One purge run; a failing store is logged, not raised."""
        try:
            removed = await self.store.purge(self.clock(), self.config.policy.greylist)
        except StoreError as error:
            log.error("purge failed error=%s", error)
            return {}
        log.info("purged", extra={k.replace(" ", "_"): n for k, n in removed.items()})
        return removed

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop listening; close idle sessions at once with 421; give those
        in a transaction ``grace`` seconds to finish; then close the rest."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for server in self.servers + self.policy_servers:
            server.close()
        deadline = time.monotonic() + grace
        while self.handler.sessions and time.monotonic() < deadline:
            for session in list(self.handler.sessions):
                if not session.in_transaction:
                    session.say_goodbye()
            await asyncio.sleep(0.1)
        for session in list(self.handler.sessions):
            session.say_goodbye()
        if self.policy_service is not None:
            self.policy_service.close()
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        await asyncio.sleep(0.05)  # let the closed sessions see their end
        self.handler.sessions.clear()
        await self.store.close()
        self.countries.close()
        self.stopping.set()


def make_backend(config: Config) -> Backend:
    maildir = config.backend.maildir
    if maildir is not None:
        return MaildirBackend(maildir, config.proxy.hostname)
    return SmtpBackend(config.backend, config.proxy.hostname)


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.proxy.tls_cert is None or config.proxy.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.proxy.tls_cert, config.proxy.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(
            f"cannot load TLS certificate {config.proxy.tls_cert} "
            f"and key {config.proxy.tls_key}: {error}"
        ) from error
    return context


async def start(config: Config, *, clock: Callable[[], float] = time.time) -> Daemon:
    """Open every part, bind every listener, and log the summary line."""
    # What can fail without leaving anything open comes first.
    context = tls_context(config)
    try:
        countries = CountryLookup(config.geoip.database)
        store = await Store.open(config.store.path, config.store.lock_timeout)
    except (GeoipError, StoreError) as error:
        raise StartupError(str(error)) from error

    backend = make_backend(config)
    try:
        await backend.probe()
    except (BackendError, OSError) as error:
        await store.close()
        raise StartupError(f"backend {backend.description}: {error}") from error

    decider = Decider(
        policy=config.policy,
        countries=countries,
        state=store,
        clock=clock,
        on_error=config.store.on_error,
    )
    handler = ProxyHandler(
        decider=decider, backend=backend, max_recipients=config.proxy.max_recipients
    )
    daemon = Daemon(config, handler, store, countries, clock)

    def session() -> ProxyServer:
        return ProxyServer(
            handler,
            hostname=config.proxy.hostname,
            ident="ESMTP",
            data_size_limit=config.proxy.max_message_size,
            enable_SMTPUTF8=True,
            tls_context=context,
            timeout=config.proxy.timeout,
            max_errors=config.proxy.max_errors,
        )

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_tls_errors)
    for endpoint in config.proxy.listen:
        try:
            server = await loop.create_server(
                session, endpoint.host, endpoint.port, reuse_address=True
            )
        except OSError as error:
            await daemon.stop(grace=0)
            raise StartupError(f"cannot listen on {endpoint}: {error}") from error
        daemon.servers.append(server)

    daemon.switch()
    daemon.start_jobs()
    await _start_policy_service(daemon)
    await _start_auth_http(daemon)
    _log_summary(daemon, backend, context is not None)
    return daemon


async def _start_policy_service(daemon: Daemon) -> None:
    """The Postfix policy delegation listeners, if any are configured."""
    service = PolicyService(daemon.handler.decider)
    daemon.policy_service = service
    limit = MAX_REQUEST
    for item in daemon.config.policy_service.listen:
        try:
            if item.startswith("unix:"):
                server = await asyncio.start_unix_server(
                    service.serve, path=item.removeprefix("unix:"), limit=limit
                )
            else:
                endpoint = parse_endpoint(item)
                server = await asyncio.start_server(
                    service.serve,
                    endpoint.host,
                    endpoint.port,
                    limit=limit,
                    reuse_address=True,
                )
        except OSError as error:
            await daemon.stop(grace=0)
            raise StartupError(f"cannot listen on {item}: {error}") from error
        daemon.policy_servers.append(server)


def _quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client's broken TLS is one INFO line, not an ERROR with a traceback;
    everything else goes to asyncio's own handler."""
    error = context.get("exception")
    if isinstance(error, ssl.SSLError | ConnectionResetError):
        log.info("tls failed error=%r", error)
        return
    loop.default_exception_handler(context)


async def _start_auth_http(daemon: Daemon) -> None:
    """The nginx auth_http listeners, if any are configured."""
    if not daemon.config.auth_http.listen:
        return
    try:
        backend = backend_for_nginx(daemon.config.backend.endpoint)
    except ValueError as error:
        await daemon.stop(grace=0)
        raise StartupError(str(error)) from error
    service = AuthHttpService(daemon.handler.decider, backend)
    runner = web.AppRunner(service.app, access_log=None)
    await runner.setup()
    daemon.web_runner = runner
    for endpoint in daemon.config.auth_http.listen:
        try:
            await web.TCPSite(runner, endpoint.host, endpoint.port).start()
        except OSError as error:
            await daemon.stop(grace=0)
            raise StartupError(f"cannot listen on {endpoint}: {error}") from error


def _log_summary(daemon: Daemon, backend: Backend, tls: bool) -> None:
    config = daemon.config
    built = daemon.countries.built
    if config.geoip.database is None:
        log.warning("no [geoip] database: every client has country ZZ")
    if config.backend.maildir is None and config.backend.client_identity == "none":
        log.warning(
            "client_identity is none: the backend sees every client as greygeo; "
            "a backend that trusts greygeo's address (Postfix mynetworks) "
            "becomes an open relay"
        )
    log.info(
        "started",
        extra={
            "listen": ",".join(f"{h}:{p}" for h, p in daemon.addresses),
            "backend": backend.description,
            "rules": len(config.policy.rules),
            "geoip": str(config.geoip.database or "none"),
            "geoip_built": built.date().isoformat() if built else "none",
            "store": str(config.store.path),
            "starttls": "on" if tls else "off",
            "policy": ",".join(config.policy_service.listen) or "off",
            "auth_http": ",".join(map(str, config.auth_http.listen)) or "off",
            "schedule": config.schedule.zone.key,
            "periods": ",".join(daemon.periods) or "base",
        },
    )


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config.

    The handlers are in place before the first socket listens, so a signal
    sent as soon as the port answers is never the default (fatal) one."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    running: list[Daemon] = []

    def reload() -> None:
        if not running:
            log.warning("SIGHUP during start-up ignored")
            return
        running[0].reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, reload)

    daemon = await start(config)
    running.append(daemon)
    await stop_requested.wait()
    log.info("stopping sessions=%d", len(daemon.handler.sessions))
    await daemon.stop()
