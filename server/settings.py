"""Settings, read once from the environment into a typed object."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import quote, urlsplit

from channels.backends import BROKERS
from storage.database import default_sqlite_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """Bounds on connections before their request is read, with safe defaults.
    A cap of 0 turns that cap off."""

    handshake_timeout_seconds: float = 10.0
    max_header_line_bytes: int = 8 * 1024
    max_head_bytes: int = 16 * 1024
    max_header_fields: int = 100
    max_pending_handshakes: int = 1024
    max_handshakes_per_address: int = 0
    max_sockets_per_address: int = 0
    trusted_proxies: tuple[IPNetwork, ...] = ()


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, 192.0.2.7` → networks; raises ValueError naming a bad entry."""
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}.")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}.") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative.")
    return value


def _origins(raw: str) -> frozenset[str]:
    origins = set()
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                f"AM_ALLOWED_ORIGINS holds {item!r}, which is not an origin like https://ats.example.com."
            )
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(raw)
    except ValueError as error:
        raise ConfigError(
            f"AM_TRUSTED_PROXIES holds {error}; give addresses or networks like 10.0.0.0/8."
        ) from None


_GUARD = GuardLimits()
DEFAULT_LINK_PATH = "/candidates/{candidate}?thread={thread}&message={message}"
_LINK_FIELDS = {"candidate", "thread", "message"}


def _link_template(raw: str) -> str:
    """`AM_LINK_TEMPLATE`, checked: an http(s) URL whose only fields are the three known."""
    raw = raw.strip()
    if not raw:
        return ""
    try:
        names = {name for _, name, _, _ in Formatter().parse(raw) if name is not None}
        raw.format(candidate="c", thread=1, message=1)
    except (ValueError, IndexError, KeyError):
        names = {"?"}
    parts = urlsplit(raw)
    if names - _LINK_FIELDS or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            "AM_LINK_TEMPLATE must be an http(s) URL whose only fields are {candidate}, "
            f"{{thread}} and {{message}}, not {raw!r}."
        )
    return raw


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _reply_domain(raw: str) -> str:
    """`AM_REPLY_DOMAIN`, checked: a domain name such as reply.messaging.acme.example."""
    domain = raw.strip().lower().rstrip(".")
    if domain and not _DOMAIN.fullmatch(domain):
        raise ConfigError(
            f"AM_REPLY_DOMAIN must be a domain name like reply.messaging.example, not {raw!r}."
        )
    return domain


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {raw!r}.")


@dataclass(frozen=True)
class Settings:
    secret: str
    service_token: str
    database_url: str = field(default_factory=default_sqlite_url)
    broker_url: str = "memory://"
    smtp_url: str | None = None
    email_delay_seconds: float = 120.0
    allowed_origins: frozenset[str] = frozenset()
    public_url: str = "http://localhost:8000"
    send_rate_per_minute: int = 120
    max_connections_per_user: int = 20
    event_retention_days: int = 7
    email_from: str = ""
    smtp_timeout_seconds: float = 30.0
    run_email_worker: bool = True
    handshake_timeout_seconds: float = _GUARD.handshake_timeout_seconds
    max_pending_handshakes: int = _GUARD.max_pending_handshakes
    max_handshakes_per_address: int = _GUARD.max_handshakes_per_address
    max_sockets_per_address: int = _GUARD.max_sockets_per_address
    trusted_proxies: tuple[IPNetwork, ...] = _GUARD.trusted_proxies
    # Where links in emails point; "" means this server's own candidate page.
    link_template: str = ""
    # Serve the demo host pages and login links (`make run`).
    demo: bool = False
    # Replies by email (`agency-messaging inbound`); "" leaves alerts without a Reply-To.
    reply_domain: str = ""
    reply_ttl_days: int = 30
    # The authserv-id of our own mail server's Authentication-Results headers; with
    # reply_require_auth, a reply they do not vouch for (SPF/DKIM/DMARC pass) is refused.
    reply_authserv_id: str = ""
    reply_require_auth: bool = False
    reply_max_bytes: int = 25 * 1024 * 1024
    var_dir: Path = Path("var")
    web_dir: Path = Path(__file__).resolve().parent.parent / "web"

    @property
    def mail_dir(self) -> Path:
        return self.var_dir / "mail"

    @property
    def sender(self) -> str:
        if self.email_from:
            return self.email_from
        host = urlsplit(self.public_url).hostname or "localhost"
        return f"Agency Messaging <alerts@{host}>"

    def link(self, candidate: str, thread: int, message: int) -> str:
        """The link that opens `message` in `thread` of `candidate`, by `AM_LINK_TEMPLATE`."""
        template = self.link_template or f"{self.public_url}{DEFAULT_LINK_PATH}"
        return template.format(candidate=quote(candidate, safe=""), thread=thread, message=message)

    @property
    def guard_limits(self) -> GuardLimits:
        return GuardLimits(
            handshake_timeout_seconds=self.handshake_timeout_seconds,
            max_pending_handshakes=self.max_pending_handshakes,
            max_handshakes_per_address=self.max_handshakes_per_address,
            max_sockets_per_address=self.max_sockets_per_address,
            trusted_proxies=self.trusted_proxies,
        )

    @property
    def database_is_default(self) -> bool:
        return self.database_url == default_sqlite_url(self.var_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secret = env.get("AM_SECRET", "")
        service_token = env.get("AM_SERVICE_TOKEN", "")
        if len(secret) < 32:
            raise ConfigError("AM_SECRET must be set to a key of at least 32 characters.")
        if len(service_token) < 16:
            raise ConfigError("AM_SERVICE_TOKEN must be set to a token of at least 16 characters.")
        var_dir = Path(env.get("AM_VAR_DIR", "var"))
        broker_url = env.get("AM_BROKER_URL", "") or _default("broker_url")
        if urlsplit(broker_url).scheme not in BROKERS:
            raise ConfigError(
                f"AM_BROKER_URL must start with memory:// or redis://, not {broker_url!r}."
            )
        smtp_url = env.get("AM_SMTP_URL", "") or None
        if smtp_url and urlsplit(smtp_url).scheme not in ("smtp", "smtps"):
            raise ConfigError("AM_SMTP_URL must start with smtp:// or smtps://.")
        handshake_timeout = _float(
            env, "AM_HANDSHAKE_TIMEOUT_SECONDS", _default("handshake_timeout_seconds")
        )
        if handshake_timeout == 0:
            raise ConfigError("AM_HANDSHAKE_TIMEOUT_SECONDS must be more than 0.")
        public_url = (env.get("AM_PUBLIC_URL", "") or _default("public_url")).rstrip("/")
        reply_authserv_id = env.get("AM_REPLY_AUTHSERV_ID", "").strip()
        reply_require_auth = env_flag(env, "AM_REPLY_REQUIRE_AUTH", False)
        if reply_require_auth and not reply_authserv_id:
            raise ConfigError(
                "AM_REPLY_REQUIRE_AUTH needs AM_REPLY_AUTHSERV_ID: the name your mail server "
                "writes first in its Authentication-Results headers (headers by anyone else "
                "are not trusted)."
            )
        return cls(
            secret=secret,
            service_token=service_token,
            database_url=env.get("AM_DATABASE_URL", "") or default_sqlite_url(var_dir),
            broker_url=broker_url,
            smtp_url=smtp_url,
            email_delay_seconds=_float(
                env, "AM_EMAIL_DELAY_SECONDS", _default("email_delay_seconds")
            ),
            allowed_origins=_origins(env.get("AM_ALLOWED_ORIGINS", "")),
            public_url=public_url,
            send_rate_per_minute=_int(
                env, "AM_SEND_RATE_PER_MINUTE", _default("send_rate_per_minute")
            ),
            max_connections_per_user=_int(
                env, "AM_MAX_CONNECTIONS_PER_USER", _default("max_connections_per_user")
            ),
            event_retention_days=_int(
                env, "AM_EVENT_RETENTION_DAYS", _default("event_retention_days"), minimum=1
            ),
            email_from=env.get("AM_EMAIL_FROM", "").strip(),
            smtp_timeout_seconds=_float(
                env, "AM_SMTP_TIMEOUT_SECONDS", _default("smtp_timeout_seconds")
            ),
            run_email_worker=env.get("AM_EMAIL_WORKER", "1").strip().lower()
            not in ("0", "false", "no"),
            link_template=_link_template(env.get("AM_LINK_TEMPLATE", "")),
            demo=env_flag(env, "AM_DEMO", False),
            reply_domain=_reply_domain(env.get("AM_REPLY_DOMAIN", "")),
            reply_ttl_days=_int(env, "AM_REPLY_TTL_DAYS", _default("reply_ttl_days"), minimum=1),
            reply_authserv_id=reply_authserv_id,
            reply_require_auth=reply_require_auth,
            reply_max_bytes=_int(
                env, "AM_REPLY_MAX_BYTES", _default("reply_max_bytes"), minimum=64 * 1024
            ),
            var_dir=var_dir,
            handshake_timeout_seconds=handshake_timeout,
            max_pending_handshakes=_int(
                env, "AM_MAX_PENDING_HANDSHAKES", _default("max_pending_handshakes")
            ),
            max_handshakes_per_address=_int(
                env, "AM_MAX_HANDSHAKES_PER_ADDRESS", _default("max_handshakes_per_address")
            ),
            max_sockets_per_address=_int(
                env, "AM_MAX_SOCKETS_PER_ADDRESS", _default("max_sockets_per_address")
            ),
            trusted_proxies=_networks(env.get("AM_TRUSTED_PROXIES", "")),
        )


def _default(name: str) -> Any:
    """A setting's default, written once: in the class's field."""
    return next(f.default for f in fields(Settings) if f.name == name)
