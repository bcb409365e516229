"""What the rules know about one recipient of one transaction.

Front ends fill a ``Facts`` from the wire and the lookups (GeoIP); rules only
read it. Normalisation that every rule relies on (IPv4-mapped addresses,
domain case) happens here, once.
"""

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

Address = IPv4Address | IPv6Address

UNKNOWN_COUNTRY = "ZZ"


def plain_address(text: str | Address) -> Address:
    """Parse an address; an IPv4-mapped IPv6 address becomes IPv4."""
    address = ip_address(text) if isinstance(text, str) else text
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normal_domain(domain: str) -> str:
    """Lower-case a domain and drop a trailing dot; case and dot never matter."""
    return domain.strip().rstrip(".").lower()


def domain_of(address: str) -> str:
    """The domain of ``local@domain``; empty for the null sender or no ``@``."""
    _, at, domain = address.rpartition("@")
    return normal_domain(domain) if at else ""


@dataclass(frozen=True)
class Facts:
    """One recipient of one transaction, as the rules see it.

    ``transaction`` identifies the transaction across the whole daemon so a
    rate limit counts several recipients of one transaction once.
    """

    client: Address
    country: str
    helo: str
    sender: str
    recipient: str
    transaction: str = ""

    @property
    def sender_domain(self) -> str:
        return domain_of(self.sender)

    @property
    def recipient_domain(self) -> str:
        return domain_of(self.recipient)
