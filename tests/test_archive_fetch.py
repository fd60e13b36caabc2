"""What the archive's fetcher connects to, specified against real listeners on loopback addresses.

A refusal is only worth something if nothing was connected to, so every refusal here is checked
at a listener that counts the connections it accepts (:meth:`Listener.connections`), and most have
a twin that lifts the allow-list and shows the same link does reach that listener: without the
check, the refusal test would see the connection. Addresses no test can listen on (``10.x``,
cloud metadata) are checked at httpx's real transport, which opens every connection.

Linux routes all of ``127.0.0.0/8`` to ``lo``, so ``127.0.0.2`` is a second, forbidden host. The
only stand-in is a DNS server: ``socket.getaddrinfo`` answers made-up ``.test`` names.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from flask_musiccallback.archive.fetch import (
    MAX_REDIRECTS,
    Allowed,
    AllowList,
    FetchFailed,
    Refused,
    SafeFetcher,
    is_public,
)

from .listeners import Listener, listening

TRACK = b"ID3 not really an mp3, but bytes all the same"
FORBIDDEN = b"the internal page a forged link wants"


#: One TLS context for every transport built here: loading the CA bundle is most of the cost.
TLS = ssl.create_default_context()


class CountingTransport(httpx.HTTPTransport):
    """httpx's own transport, counting what reaches it: every connection is opened from here."""

    def __init__(self) -> None:
        super().__init__(verify=TLS)
        self.urls: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return super().handle_request(request)


def _can_listen(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


IPV6_LOOPBACK = _can_listen("::1")


_FETCHERS: dict[tuple[tuple[str, ...], float], SafeFetcher] = {}


def fetch(url: str, allow: Iterable[str] = (), *, timeout: float = 2.0) -> bytes:
    """The body ``url`` gives, through a fetcher for ``allow``.

    Fetchers are shared between tests, as the archive shares one between the links of a run.
    """
    key = (tuple(allow), timeout)
    if key not in _FETCHERS:
        _FETCHERS[key] = SafeFetcher(AllowList.parse(key[0]), timeout=timeout)
    with _FETCHERS[key].stream(url) as response:
        return response.read()


@pytest.fixture(scope="module", autouse=True)
def _close_fetchers() -> Iterator[None]:
    yield
    for fetcher in _FETCHERS.values():
        fetcher.close()
    _FETCHERS.clear()


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    """Start listeners (:func:`~tests.listeners.listening`), all closed after the test."""
    with ExitStack() as stack:

        def start(host: str = "127.0.0.1", port: int = 0, *, hang: bool = False) -> Listener:
            return stack.enter_context(listening(host, port, hang=hang))

        yield start


@pytest.fixture
def media(listen: Callable[..., Listener]) -> Listener:
    """The media server a callback may name: ``127.0.0.1``, serving ``/track.mp3``."""
    server = listen("127.0.0.1")
    server.routes["/track.mp3"] = (200, {"Content-Type": "audio/mpeg"}, TRACK)
    return server


@pytest.fixture
def inside(listen: Callable[..., Listener], media: Listener) -> Listener:
    """A host the archive must never reach: ``127.0.0.2``, on the media server's port, so that a
    name moved from one address to the other (DNS rebinding) would land on it."""
    server = listen("127.0.0.2", media.port)
    server.routes["/track.mp3"] = (200, {}, FORBIDDEN)
    return server


class FakeDNS:
    """Answers for made-up ``.test`` names, in turn (the last one repeats); other names go to the
    system resolver. Records every question about a ``.test`` name."""

    def __init__(self, resolver: Callable[..., Any]) -> None:
        self.resolver = resolver
        self.answers: dict[str, list[list[str]]] = {}
        self.questions: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".test"):
            return self.resolver(host, port, *args, **kwargs)
        self.questions.append(name)
        turns = self.answers.get(name)
        if not turns:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = turns.pop(0) if len(turns) > 1 else turns[0]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))
            for address in addresses
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


# Loopback, in every spelling that leads there.


def test_a_loopback_link_is_refused_and_never_connected(media: Listener) -> None:
    with pytest.raises(Refused, match=r"127\.0\.0\.1.*MUSICCALLBACK_ARCHIVE_ALLOW"):
        fetch(media.url())
    assert media.connections() == 0


def test_localhost_is_refused_by_the_address_it_resolves_to(media: Listener) -> None:
    with pytest.raises(Refused):
        fetch(media.url(host="localhost"))
    assert media.connections() == 0


LOOPBACK_SPELLINGS = [
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f000001",  # ... in hexadecimal
    "127.1",  # with the zeros left out
    "0.0.0.0",  # "this host": Linux connects it to loopback
    "0",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_other_spellings_of_loopback_are_refused(media: Listener, host: str) -> None:
    with pytest.raises(Refused):
        fetch(media.url(host=host))
    assert media.connections() == 0


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_those_spellings_do_reach_loopback_once_allowed(media: Listener, host: str) -> None:
    """The refusals above are real: each spelling leads to the listener when allowed."""
    allow = ["127.0.0.0/8", "0.0.0.0/8", "::ffff:127.0.0.0/104"]
    assert fetch(media.url(host=host), allow) == TRACK
    assert media.connections() == 1


def test_ipv6_loopback_is_refused(listen: Callable[..., Listener]) -> None:
    if not IPV6_LOOPBACK:  # no connection is attempted, so the refusal holds without one
        with pytest.raises(Refused):
            fetch("http://[::1]:9/track.mp3")
        return
    server = listen("::1")
    server.routes["/track.mp3"] = (200, {}, TRACK)
    with pytest.raises(Refused):
        fetch(server.url())
    assert server.connections() == 0
    assert fetch(server.url(), ["::1"]) == TRACK
    assert server.connections() == 1


# Addresses inside a network or reserved: refused before any connection.

INSIDE = [
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "127.0.0.2",
    "0.0.0.0",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "255.255.255.255",  # broadcast
    "240.0.0.1",  # reserved
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "::",
    "::1",
    "fc00::1",  # unique local
    "fd00:ec2::254",  # cloud metadata over IPv6
    "fe80::1",  # link-local
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:224.0.0.1",
    "::7f00:1",  # IPv4-compatible (deprecated, reserved)
    "::ffff:0:7f00:1",  # IPv4-translated (reserved)
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
]


@pytest.mark.parametrize("address", INSIDE)
def test_a_non_public_address_is_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",  # judged by the IPv4 address it carries
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8: all an IPv6-only host has of an IPv4 site
        "2002:808:808::1",
    ],
)
def test_a_public_address_is_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", INSIDE)
def test_a_non_public_address_is_refused_before_connecting(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    transport = CountingTransport()
    started = time.monotonic()
    with (
        SafeFetcher(AllowList(), timeout=2.0, transport=transport) as fetcher,
        pytest.raises(Refused, match="not public"),
        fetcher.stream(f"http://{host}:8080/track.mp3"),
    ):
        pass
    assert time.monotonic() - started < 0.5
    assert transport.urls == []


# Schemes.


@pytest.mark.parametrize(
    "link",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/track.mp3",
        "gopher://127.0.0.1:{port}/_GET%20/track.mp3",
        "ws://127.0.0.1:{port}/track.mp3",
        "data:audio/mpeg;base64,SUQz",
        "//127.0.0.1:{port}/track.mp3",
        "127.0.0.1:{port}/track.mp3",
        "http:///track.mp3",
        "http://[::1/track.mp3",
    ],
)
def test_only_http_and_https_links_are_fetched(media: Listener, link: str) -> None:
    """Even to an allowed address: a scheme httpx does not speak is no reason to try it."""
    with pytest.raises(Refused):
        fetch(link.format(port=media.port), ["127.0.0.1"])
    assert media.connections() == 0


# Redirects: each hop checked again.


@pytest.mark.parametrize("location", ["http://127.0.0.2:{port}/track.mp3", "//127.0.0.2:{port}/"])
def test_a_redirect_out_of_the_allow_list_is_refused(
    media: Listener, inside: Listener, location: str
) -> None:
    media.routes["/go"] = (302, {"Location": location.format(port=inside.port)}, b"")
    with pytest.raises(Refused, match=r"127\.0\.0\.2"):
        fetch(media.url("/go"), ["127.0.0.1"])
    assert inside.connections() == 0
    assert [path for path, _ in media.requests] == ["/go"]


def test_the_same_redirect_is_followed_when_its_target_is_allowed(
    media: Listener, inside: Listener
) -> None:
    """The refusal above is real: the redirect leads to the inside listener once allowed."""
    media.routes["/go"] = (302, {"Location": inside.url()}, b"")
    assert fetch(media.url("/go"), ["127.0.0.0/8"]) == FORBIDDEN
    assert inside.connections() == 1


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/", "gopher://x/"])
def test_a_redirect_to_another_scheme_is_refused(media: Listener, location: str) -> None:
    media.routes["/go"] = (301, {"Location": location}, b"")
    with pytest.raises(Refused, match="only http and https"):
        fetch(media.url("/go"), ["127.0.0.1"])
    assert media.connections() == 1


def test_a_redirect_to_a_malformed_link_fails(media: Listener) -> None:
    media.routes["/go"] = (302, {"Location": "http://[::1"}, b"")
    with pytest.raises(FetchFailed, match="location"):
        fetch(media.url("/go"), ["127.0.0.0/8", "::1"])
    assert media.connections() == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_an_allowed_place_is_followed(media: Listener, status: int) -> None:
    media.routes["/go"] = (status, {"Location": "/track.mp3"}, b"moved")
    assert fetch(media.url("/go", host="localhost"), ["127.0.0.1"]) == TRACK
    assert [path for path, _ in media.requests] == ["/go", "/track.mp3"]
    assert media.hosts() == [f"localhost:{media.port}"] * 2


def _chain(server: Listener, hops: int) -> str:
    """A path that redirects ``hops`` times before the track."""
    for hop in range(hops):
        target = f"/hop{hop + 1}" if hop + 1 < hops else "/track.mp3"
        server.routes[f"/hop{hop}"] = (302, {"Location": target}, b"")
    return "/hop0"


def test_max_redirects_are_followed(media: Listener) -> None:
    assert fetch(media.url(_chain(media, MAX_REDIRECTS)), ["127.0.0.1"]) == TRACK


def test_one_redirect_more_fails_for_good(media: Listener) -> None:
    with pytest.raises(FetchFailed, match="redirects") as failed:
        fetch(media.url(_chain(media, MAX_REDIRECTS + 1)), ["127.0.0.1"])
    assert failed.value.retry is False
    assert len(media.requests) == MAX_REDIRECTS + 1
    assert "/track.mp3" not in [path for path, _ in media.requests]


def test_a_redirect_loop_ends(media: Listener) -> None:
    media.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(FetchFailed, match="redirects"):
        fetch(media.url("/loop"), ["127.0.0.1"])
    assert media.connections() == MAX_REDIRECTS + 1


# The allow-list.


@pytest.mark.parametrize("entry", ["localhost", "LocalHost.", "127.0.0.1", "127.0.0.0/8"])
def test_an_allowed_host_address_or_network_is_reached(media: Listener, entry: str) -> None:
    assert fetch(media.url(host="localhost"), [entry]) == TRACK
    assert media.connections() == 1


def test_a_network_allows_every_address_in_it(media: Listener, inside: Listener) -> None:
    assert fetch(inside.url(), ["127.0.0.0/30"]) == FORBIDDEN
    assert inside.connections() == 1


def test_an_allowed_name_does_not_allow_its_address_by_another_name(media: Listener) -> None:
    with pytest.raises(Refused):
        fetch(media.url(), ["localhost"])
    assert media.connections() == 0


def test_an_allowed_address_allows_no_neighbour(media: Listener, inside: Listener) -> None:
    with pytest.raises(Refused):
        fetch(inside.url(), ["127.0.0.1"])
    assert inside.connections() == 0


def test_the_allow_list_reads_names_addresses_and_networks() -> None:
    allow = AllowList.parse(
        [" Media.Example. ", "media_server", "bücher.example", "10.1.2.3", "10.9.8.7/8", "::1"]
    )
    with_ports = AllowList.parse(["localhost:8080", "127.0.0.1:5000", "[::1]:443"])
    assert allow.entries == (
        Allowed(host="media.example"),
        Allowed(host="media_server"),
        Allowed(host="xn--bcher-kva.example"),
        Allowed(network=ipaddress.ip_network("10.1.2.3/32")),
        Allowed(network=ipaddress.ip_network("10.0.0.0/8")),
        Allowed(network=ipaddress.ip_network("::1/128")),
    )
    assert with_ports.entries == (
        Allowed(host="localhost", port=8080),
        Allowed(network=ipaddress.ip_network("127.0.0.1/32"), port=5000),
        Allowed(network=ipaddress.ip_network("::1/128"), port=443),
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_an_entry_with_a_port_allows_that_port_only(media: Listener, host: str) -> None:
    assert fetch(media.url(host=host), [f"{host}:{media.port}"]) == TRACK
    assert media.connections() == 1
    with pytest.raises(Refused):
        fetch(media.url(host=host), [f"{host}:{media.port + 1}"])
    assert media.connections() == 1


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "   ",
        "10.0.0.0/33",
        "10.0.0.0/8/8",
        "fe80::/129",
        "media..example",
        ".",
        "http://media.example/",
        "127.0.0.0/8:8080",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "[media.internal]:8080",
        "media server",
        "*.example.com",
        "user@media.example",
        "127.0.0.1, localhost",  # one string of several, as an environment variable holds them
    ],
)
def test_the_allow_list_rejects_what_is_no_host_or_network(entry: str) -> None:
    with pytest.raises(ValueError, match=r"entry|neither|host name|port|IPv6"):
        AllowList.parse([entry])


# Pinning: the checked address is the one connected to; the name travels in Host.


def test_the_media_server_sees_the_links_name_and_port(media: Listener) -> None:
    fetch(media.url(host="localhost"), ["localhost"])
    assert media.hosts() == [f"localhost:{media.port}"]


def test_an_internationalised_name_is_sent_in_its_ascii_form(media: Listener, dns: FakeDNS) -> None:
    dns.answers["xn--bcher-kva.test"] = [["127.0.0.1"]]
    assert fetch(f"http://bücher.test:{media.port}/track.mp3", ["127.0.0.1"]) == TRACK
    assert media.hosts() == [f"xn--bcher-kva.test:{media.port}"]


def test_an_internationalised_name_on_the_allow_list_allows_its_links(
    media: Listener, dns: FakeDNS
) -> None:
    dns.answers["xn--bcher-kva.test"] = [["127.0.0.1"]]
    assert fetch(f"http://bücher.test:{media.port}/track.mp3", ["Bücher.test"]) == TRACK


def test_a_malformed_name_fails_as_a_fetch_not_a_crash(dns: FakeDNS) -> None:
    """httpx's decoded ``host`` raises for a bad ``xn--`` label; the archive must see a failure
    of that one link, not an error that ends the copy of every other file of the event."""
    with pytest.raises((Refused, FetchFailed)):
        fetch("http://xn--.test/track.mp3", ["127.0.0.1"])


def test_the_connection_goes_to_the_address_that_was_checked(
    media: Listener, inside: Listener, dns: FakeDNS
) -> None:
    """DNS rebinding: the name resolves to an allowed address for the check and to a forbidden
    one a moment later; only the first answer is asked for, and used."""
    dns.answers["media.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    assert fetch(media.url(host="media.test"), ["127.0.0.1"]) == TRACK
    assert dns.questions == ["media.test"]
    assert inside.connections() == 0
    assert media.connections() == 1
    assert media.hosts() == [f"media.test:{media.port}"]


def test_each_redirect_hop_is_resolved_and_checked_again(
    media: Listener, inside: Listener, dns: FakeDNS
) -> None:
    dns.answers["media.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    media.routes["/go"] = (302, {"Location": "/track.mp3"}, b"")
    with pytest.raises(Refused, match=r"127\.0\.0\.2"):
        fetch(media.url("/go", host="media.test"), ["127.0.0.1"])
    assert dns.questions == ["media.test", "media.test"]
    assert inside.connections() == 0


def test_every_address_a_name_has_must_be_allowed(
    media: Listener, inside: Listener, dns: FakeDNS
) -> None:
    """Checking only the first answer would connect to it, and the next resolver could pick the
    other."""
    dns.answers["media.test"] = [["127.0.0.1", "127.0.0.2"]]
    with pytest.raises(Refused, match=r"127\.0\.0\.2"):
        fetch(media.url(host="media.test"), ["127.0.0.1"])
    assert media.connections() == 0
    assert inside.connections() == 0


def test_an_unresolvable_name_may_resolve_later(dns: FakeDNS) -> None:
    with pytest.raises(FetchFailed, match="cannot resolve") as failed:
        fetch("http://media.test/track.mp3")
    assert failed.value.retry is True


def test_no_connection_is_kept_for_the_next_link(media: Listener) -> None:
    """A kept connection to ``127.0.0.1`` would carry the next link's request whatever its name:
    the server keeps HTTP/1.1 connections open, so only the fetcher can be closing them."""
    with SafeFetcher(AllowList.parse(["127.0.0.1", "localhost"]), timeout=2.0) as fetcher:
        for url in (media.url(host="localhost"), media.url()):
            with fetcher.stream(url) as response:
                assert response.read() == TRACK
    assert media.connections() == 2
    assert media.hosts() == [f"localhost:{media.port}", f"127.0.0.1:{media.port}"]


# What a failure says about another attempt.


@pytest.mark.parametrize(
    ("status", "retry"),
    [(404, False), (410, False), (403, False), (429, True), (500, True), (503, True)],
)
def test_a_status_other_than_200_fails_and_says_whether_to_retry(
    media: Listener, status: int, retry: bool
) -> None:
    media.routes["/track.mp3"] = (status, {}, b"no")
    with pytest.raises(FetchFailed, match=str(status)) as failed:
        fetch(media.url(), ["127.0.0.1"])
    assert failed.value.retry is retry


def test_a_refused_connection_is_worth_another_attempt() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchFailed, match="ConnectError") as failed:
        fetch(f"http://127.0.0.1:{port}/track.mp3", ["127.0.0.1"])
    assert failed.value.retry is True


def test_a_server_that_never_answers_times_out_and_is_worth_another_attempt(
    listen: Callable[..., Listener],
) -> None:
    silent = listen("127.0.0.1", hang=True)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="Timeout") as failed:
        fetch(silent.url(), ["127.0.0.1"], timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3
    assert failed.value.retry is True
    assert len(silent.requests) == 1


def test_a_connection_dropped_unanswered_is_worth_another_attempt(media: Listener) -> None:
    media.routes["/track.mp3"] = None
    with pytest.raises(FetchFailed) as failed:
        fetch(media.url(), ["127.0.0.1"])
    assert failed.value.retry is True
