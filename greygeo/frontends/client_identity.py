"""Telling the backend who the real client is: XCLIENT and PROXY headers.

Behind greygeo every connection to the backend comes from greygeo's own
address. The backend learns the real client from one of:

- XCLIENT (a Postfix extension, also in Exim and OpenSMTPD forks): an SMTP
  command sent after EHLO; values are xtext (RFC 3461 4), IPv6 addresses
  carry an ``IPV6:`` prefix. The server answers 220 and resets the session.
- the PROXY protocol header of HAProxy, version 1 (text) or 2 (binary),
  written before any SMTP byte.
"""

import struct
from dataclasses import dataclass

from greygeo.rules.facts import Address

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass(frozen=True)
class ClientInfo:
    """The client as greygeo saw it, and the local end it connected to."""

    address: Address
    port: int
    helo: str
    esmtp: bool
    local_address: Address
    local_port: int


def xtext(value: str) -> str:
    """Encode a value as xtext: ``+``, ``=`` and non-printables become ``+HH``."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def xclient_arguments(client: ClientInfo) -> list[bytes]:
    """The arguments of the XCLIENT command for this client."""
    address = str(client.address)
    if client.address.version == 6:
        address = "IPV6:" + address
    fields = {
        "ADDR": address,
        "PORT": str(client.port),
        # No reverse lookup is made: the backend sees the name as unavailable.
        "NAME": "[UNAVAILABLE]",
        "HELO": client.helo,
        "PROTO": "ESMTP" if client.esmtp else "SMTP",
    }
    return [f"{key}={xtext(value)}".encode("ascii") for key, value in fields.items()]


def proxy_v1_header(client: ClientInfo | None) -> bytes:
    """``PROXY TCP4 src dst sport dport`` with CRLF; ``PROXY UNKNOWN`` for a
    connection greygeo makes on its own behalf (the start-up probe)."""
    if client is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if client.address.version == 4 else "TCP6"
    local = client.local_address
    if local.version != client.address.version:
        local = client.address  # mixed families cannot be expressed
    return (
        f"PROXY {family} {client.address} {local} {client.port} {client.local_port}\r\n"
    ).encode("ascii")


def proxy_v2_header(client: ClientInfo | None) -> bytes:
    """The binary PROXY v2 header: PROXY command over TCP (v4 or v6); the
    LOCAL command for a connection greygeo makes on its own behalf."""
    if client is None:
        return PROXY_V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    local = client.local_address
    if local.version != client.address.version:
        local = client.address
    family = 0x11 if client.address.version == 4 else 0x21
    addresses = (
        client.address.packed
        + local.packed
        + struct.pack("!HH", client.port, client.local_port)
    )
    return (
        PROXY_V2_SIGNATURE
        + struct.pack("!BBH", 0x21, family, len(addresses))
        + addresses
    )
