"""Fetching a media link a callback named, without letting the link reach inside the network.

A callback's links are chosen by whoever sends the callback. Fetched blindly, a link to
``http://127.0.0.1:8080/admin``, to a cloud's metadata address, or to a public name that redirects
(or resolves, a second later) to either, makes the receiver read its own network and keep the
answer as a "track" (server-side request forgery). So every hop is checked, and the check is
what is connected to:

- only ``http`` and ``https`` links;
- the host is resolved once, here, and every address it resolves to must be public: not
  loopback, private, link-local, multicast, reserved or otherwise non-global, unless the host, or
  a network holding the address, is on the allow-list (:class:`AllowList`);
- the connection goes to the address just checked (the URL's host is replaced by it; the
  ``Host`` header and TLS's server name and certificate check keep the name), so a name that
  resolves differently a moment later (DNS rebinding) changes nothing;
- redirects are followed here, not by httpx, each new location checked the same way;
- connections are not kept alive between requests, so a connection opened for one name is never
  reused for another name on the same address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx

#: The schemes a media link may have.
SCHEMES = frozenset({"http", "https"})

#: The most redirects one fetch follows.
MAX_REDIRECTS = 5

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):  # noqa: N818 - reads as what happened to the link
    """A link the archive will not fetch: its scheme, or the address it leads to. Never
    retried: the same link is refused again."""


class FetchFailed(Exception):  # noqa: N818
    """A fetch that did not give the file. ``retry`` is what HTTP says of it: whether the same
    request may succeed later (a timeout, a dropped connection, 5xx, 429) or not as such (404,
    a redirect loop). The archive retries both kinds all the same, as a CDN may not have a file
    yet a moment after the callback announced it; it gives up at once only on a refusal
    or a file over its cap."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


#: Statuses worth another attempt: the server or the way to it may be better in a moment.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

#: NAT64's well-known prefix (RFC 6052): a translator delivers ``64:ff9b::a.b.c.d`` to ``a.b.c.d``.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

#: A host name on the allow-list: labels of letters, digits, ``-`` and ``_`` (a container's name),
#: so that ``*.example.com`` or ``user@media`` is an error, not an entry that never matches.
HOST_NAME = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")

#: An entry that names a port: ``host:port``, ``address:port`` or ``[IPv6 address]:port``.
WITH_PORT = re.compile(r"(?P<host>\[[^\]]+\]|[^:\[\]]+):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class Allowed:
    """One entry of the allow-list: a host name or a network, on one port or on any."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def allows(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return host.lower().rstrip(".") == self.host
        return self.network is not None and address in self.network


@dataclass(frozen=True)
class AllowList:
    """The hosts and networks a link may lead to although they are not public
    (``MUSICCALLBACK_ARCHIVE_ALLOW``): a media server of the host's own, tests' ``127.0.0.1``.

    An entry may name a port (``127.0.0.1:5000``), and then allows that port only: an app that
    serves media to itself (the example app's samples) opens its own port, not every service
    listening on the machine's loopback.
    """

    entries: tuple[Allowed, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Read host names, addresses and networks (``10.0.0.0/8``), each with a port or not;
        ``ValueError`` for an entry that is none of them."""
        return cls(tuple(_allowed(entry) for entry in entries))

    def allows(self, host: str, address: IPAddress, port: int) -> bool:
        """Whether ``host``, resolved to ``address``, may be connected to on ``port``."""
        if is_public(address):
            return True
        return any(entry.allows(host, address, port) for entry in self.entries)


def _allowed(entry: str) -> Allowed:
    entry = entry.strip().lower()
    if not entry:
        raise ValueError("an empty entry")
    port: int | None = None
    scoped = WITH_PORT.fullmatch(entry)
    if scoped is not None:
        port = int(scoped["port"])
        if not 0 < port < 65536:
            raise ValueError(f"{entry!r} names no port there can be")
        entry = scoped["host"]
        if entry.startswith("["):
            entry = entry[1:-1]
            if ":" not in entry:  # brackets hold an IPv6 address, not a name
                raise ValueError(f"{entry!r} in brackets is no IPv6 address")
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if not HOST_NAME.fullmatch(entry):
            raise ValueError(f"{entry!r} is neither a host name nor a network") from None
        return Allowed(host=_wire_name(entry.rstrip(".")), port=port)
    if port is not None and network.num_addresses > 1:
        raise ValueError(f"{entry!r}: a port goes with one address or name, not a network")
    return Allowed(network=network, port=port)


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is on the public internet: global, and not multicast or reserved.

    An IPv6 address that carries an IPv4 one a packet may be delivered to (``::ffff:127.0.0.1``,
    NAT64's ``64:ff9b::7f00:1``, 6to4's ``2002:7f00:1::``) is judged by the IPv4 one.
    """
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried(address)
        if carried is not None:
            address = carried
    return address.is_global and not address.is_multicast and not address.is_reserved


def _carried(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, for a TCP connection to ``port``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"cannot resolve {host!r}: {exc}", retry=True) from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class SafeFetcher:
    """Streams media links through the checks above; one per run of copies (it holds a client).

    ``transport`` is for tests of the fetcher itself only; the checks do not depend on it.
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        timeout: float = 30.0,
        user_agent: str = "flask-musiccallback",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.allow = allow
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            # Media are compressed already; an answer compressed again would be decoded in one
            # piece per chunk, whatever its size (the archive refuses one).
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            transport=transport,
            trust_env=False,
        )

    def __enter__(self) -> SafeFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def checked(self, url: str) -> tuple[httpx.URL, str]:
        """``url`` with its host replaced by the address to connect to, and the host's name;
        :class:`Refused` when it may not be fetched."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise Refused(f"not a usable link: {exc}") from None
        if parsed.scheme not in SCHEMES:
            raise Refused(f"only http and https links are fetched, not {parsed.scheme or url!r}")
        # The name as sent (an IDN in its ASCII form): ``Host`` and TLS need it, and httpx's
        # decoded ``host`` raises for a malformed ``xn--`` label.
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise Refused("a link without a host")
        port = parsed.port or _default_port(parsed)
        addresses = resolve(host, port)
        refused = [str(a) for a in addresses if not self.allow.allows(host, a, port)]
        if refused or not addresses:
            raise Refused(
                f"{host} resolves to {', '.join(refused) or 'nothing'}, which is not public; "
                "list it in MUSICCALLBACK_ARCHIVE_ALLOW to fetch from it"
            )
        return parsed.copy_with(host=str(addresses[0])), host

    @contextlib.contextmanager
    def stream(self, url: str) -> Iterator[httpx.Response]:
        """The answer to ``GET url``, redirects followed and checked, its body not read yet.

        Raises :class:`Refused` for a link (or a redirect) that may not be fetched, and
        :class:`FetchFailed` for an answer that is not the file.
        """
        for _ in range(MAX_REDIRECTS + 1):
            target, host = self.checked(url)
            request = self._client.build_request(
                "GET",
                target,
                headers={"Host": _host_header(httpx.URL(url), host)},
                extensions={"sni_hostname": host},
            )
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _transport_failure(exc) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    url = str(httpx.URL(url).join(location))
                    continue
                if response.status_code != 200:
                    retry = response.status_code in RETRY_STATUSES
                    raise FetchFailed(f"HTTP {response.status_code}", retry=retry)
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding != "identity":
                    # Asked for as it is: decoding it would take memory its size does not bound.
                    raise Refused(f"sent compressed ({encoding}) although asked for as it is")
                yield response
                return
            finally:
                response.close()
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects", retry=False)


def _wire_name(name: str) -> str:
    """``name`` as a link's host is compared: in the form httpx sends it (an IDN's A-labels)."""
    try:
        return httpx.URL(scheme="http", host=name).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValueError(f"{name!r} is not a usable host name: {exc}") from None


def body(response: httpx.Response, chunk_size: int) -> Iterator[bytes]:
    """The answer's body in chunks, as sent (never decoded: :meth:`SafeFetcher.stream` refuses a
    compressed one); a connection lost on the way is worth another attempt."""
    try:
        yield from response.iter_raw(chunk_size)
    except httpx.TransportError as exc:
        raise _transport_failure(exc) from None


def _transport_failure(exc: httpx.TransportError) -> FetchFailed:
    return FetchFailed(f"{type(exc).__name__}: {exc}".rstrip(": "), retry=True)


def _host_header(url: httpx.URL, host: str) -> str:
    """The ``Host`` header for ``url``: its name, and its port when it is not the default."""
    name = f"[{host}]" if ":" in host else host
    return name if url.port in (None, _default_port(url)) else f"{name}:{url.port}"


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80
