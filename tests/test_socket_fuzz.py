"""Hostile and broken requests over a real socket to a real threaded Werkzeug server.

Each request is built by hand, byte by byte, so that it can be wrong the ways a network client can
be wrong: garbage instead of HTTP, deep nesting, huge numbers, invalid UTF-8, duplicate keys, the
wrong content type, a Content-Length that lies, chunked bodies past the limit. Whatever arrives:
no 5xx, no traceback in an answer or in the server's log, and no receiver called for a request
that was refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flask_musiccallback.families import find_task_id
from flask_musiccallback.testing import build_callback, record_signals, signature_headers

from .conftest import TOKEN, URL, build_app
from .live_server import (
    RawAnswer,
    TracebackCatcher,
    catch_tracebacks,
    exchange,
    request_bytes,
    serve,
)
from .payloads import encode, music_callbacks

LIMIT = 16 * 1024
HMAC_KEY = "socket-fuzz-hmac-key"
JSON = b"application/json"
ACCEPTED = {"received", "duplicate"}


@dataclass
class Live:
    app: Flask
    port: int
    signals: list[tuple[str, dict[str, Any]]]
    tracebacks: TracebackCatcher
    signed: bool
    tried: int = 0

    def send(self, raw: bytes) -> RawAnswer:
        """Send one request and check what holds for every request, whatever it was."""
        before = len(self.signals)
        answer = exchange(self.port, raw)
        sent = {name for name, _ in self.signals[before:]}
        self.tried += 1
        assert answer.status is None or answer.status < 500, answer
        assert b"Traceback" not in answer.body
        if answer.status != 200:
            assert sent <= {"callback_rejected"}, (answer, sent)
        assert not self.tracebacks.records
        return answer


@pytest.fixture(scope="module", params=["token", "token+hmac"])
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    signed = "hmac" in request.param
    app = build_app(MAX_CONTENT_LENGTH=LIMIT, **({"HMAC_KEY": HMAC_KEY} if signed else {}))
    with serve(app) as server, record_signals(app) as signals, catch_tracebacks() as tracebacks:
        live = Live(app, server.port, signals, tracebacks, signed)
        yield live
    print(f"\n{request.param}: {live.tried} requests over the socket")


def _headers(
    live: Live, body: bytes, content_type: bytes | None = JSON
) -> list[tuple[bytes, bytes]]:
    """Content type and, on the signed server, a valid signature for the body's task id."""
    headers = [] if content_type is None else [(b"Content-Type", content_type)]
    if live.signed:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        task_id = find_task_id(payload) if isinstance(payload, dict) else None
        signed = signature_headers(task_id or "unknown", HMAC_KEY)
        headers += [(name.encode(), value.encode()) for name, value in signed.items()]
    return headers


def _post(live: Live, body: bytes, content_type: bytes | None = JSON, **kwargs: Any) -> RawAnswer:
    return live.send(request_bytes(URL, body, headers=_headers(live, body, content_type), **kwargs))


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    if rest:
        out += f"{len(rest):x}\r\n".encode() + rest + b"\r\n"
    return out + b"0\r\n\r\n"


def _refused(live: Live, answer: RawAnswer, status: int, reason: str) -> None:
    """A refusal; on the signed server a malformed body is answered 401, telling nothing."""
    if live.signed and status == 400:
        status, reason = 401, "unauthorized"
    assert answer.status == status, answer
    assert json.loads(answer.body) == {"status": "rejected", "reason": reason}


# --- generated requests --------------------------------------------------------------------------

# Over a socket, shrinking a failure can take minutes: report it as found.
FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_instead_of_http(live: Live, raw: bytes) -> None:
    live.send(raw)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_the_body(live: Live, body: bytes) -> None:
    live.send(request_bytes(URL, body, headers=_headers(live, body)))


@FUZZ
@given(
    opener=st.sampled_from([b"[", b'{"a":', b'{"code":200,"data":', b'{"data":{"data":[']),
    depth=st.integers(1, 100_000),
    closed=st.booleans(),
)
def test_deep_nesting(live: Live, opener: bytes, depth: int, closed: bool) -> None:
    closer = {b"[": b"]"}.get(opener, b"}")
    body = opener * depth + b"1" + (closer * depth if closed else b"")
    answer = _post(live, body)
    assert answer.status in (200, 400, 401, 413)
    if answer.status == 200:  # shallow enough to read, and authenticated: no family reads it
        assert json.loads(answer.body) == {"status": "kept"}


NUMBER = st.builds(
    lambda sign, digits, fraction, exponent: sign + digits + fraction + exponent,
    st.sampled_from(["", "-"]),
    st.integers(1, 20_000).map(lambda n: "9" * n),
    st.sampled_from(["", ".5", ".000001"]),
    st.sampled_from(["", "e999", "E-999", "e+400", "e4"]),
) | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e308", "-0", "0e0"])


@FUZZ
@given(st.sampled_from(["code", "duration", "createTime", "task_id", "data"]), NUMBER)
def test_huge_and_special_numbers(live: Live, field: str, number: str) -> None:
    template = {
        "code": '{"code":%s,"data":{"callbackType":"complete","task_id":"n1","data":[]}}',
        "duration": '{"code":200,"data":{"callbackType":"complete","task_id":"n2",'
        '"data":[{"duration":%s}]}}',
        "createTime": '{"code":200,"data":{"callbackType":"complete","task_id":"n3",'
        '"data":[{"createTime":%s}]}}',
        "task_id": '{"code":200,"data":{"callbackType":"complete","task_id":%s}}',
        "data": '{"code":200,"data":%s}',
    }[field]
    answer = _post(live, (template % number).encode())
    assert answer.status in (200, 400, 401, 413, 422)


INVALID_UTF8 = st.sampled_from(
    [
        b"\xff",
        b"\xc3\x28",
        b"\xa0\xa1",
        b"\xe2\x28\xa1",
        b"\xf0\x28\x8c\xbc",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xf8\x88\x80\x80\x80",
    ]
)


@FUZZ
@given(st.data())
def test_invalid_utf8_anywhere(live: Live, data: st.DataObject) -> None:
    body = encode(build_callback("complete", tracks=1))
    position = data.draw(st.integers(0, len(body)))
    body = body[:position] + data.draw(INVALID_UTF8) + body[position:]
    answer = _post(live, body)
    _refused(live, answer, 400, "invalid_json")


@FUZZ
@given(st.sampled_from(["\\ud800", "\\udfff", "\\udbff\\u0041", "x\\udc00y"]))
def test_lone_surrogate_escapes_are_not_text(live: Live, escape: str) -> None:
    for template in (
        '{"code":200,"data":{"callbackType":"complete","task_id":"%s"}}',
        '{"code":200,"data":{"callbackType":"complete","task_id":"t","data":[{"title":"%s"}]}}',
    ):
        answer = _post(live, (template % escape).encode())
        _refused(live, answer, 400, "invalid_json")


@FUZZ
@given(music_callbacks(), st.sampled_from(["code", "data", "msg"]), st.booleans())
def test_duplicate_keys_take_the_last_value(
    live: Live, payload: dict[str, Any], key: str, decoy_first: bool
) -> None:
    """Like every JSON parser of Python: the last value of a repeated key is the one read."""
    decoy = f'"{key}":{{"not":"read"}}'
    text = json.dumps(payload)
    body = "{" + decoy + "," + text[1:] if decoy_first else text[:-1] + "," + decoy + "}"
    answer = _post(live, body.encode())
    if decoy_first:
        reference = _post(live, text.encode())  # the same callback again, sent plainly
        assert answer.status == reference.status
    else:  # the decoy, read last, is no callback: kept, as the source check passed
        assert answer.status in ((200, 401) if live.signed else (200,))
        if answer.status == 200:
            assert json.loads(answer.body) == {"status": "kept"}


CONTENT_TYPES = st.sampled_from(
    [
        None,
        b"",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=xyz",
        b"application/json; charset=latin-1",
        b"application/xml",
        b"\x00\xff;;=",
    ]
)


@FUZZ
@given(CONTENT_TYPES, st.sampled_from([b"", b"a=1&b=2", b"--xyz\r\n\r\n--xyz--", b"<a/>"]))
def test_wrong_content_types_and_bodies(
    live: Live, content_type: bytes | None, body: bytes
) -> None:
    answer = _post(live, body, content_type)
    _refused(live, answer, 400, "invalid_json")


@FUZZ
@given(CONTENT_TYPES)
def test_a_real_callback_is_read_whatever_content_type_it_claims(
    live: Live, content_type: bytes | None
) -> None:
    """The provider's content type is not a security boundary; the token and signature are."""
    answer = _post(live, encode(build_callback("complete")), content_type)
    assert answer.status == 200, answer
    assert json.loads(answer.body)["status"] in ACCEPTED


@FUZZ
@given(
    declared=st.sampled_from(["longer", "shorter", "garbage", "negative", "twice", "huge"]),
    payload=music_callbacks(),
)
def test_a_lying_content_length(live: Live, declared: str, payload: dict[str, Any]) -> None:
    body = encode(payload)
    length = {
        "longer": str(len(body) + 100).encode(),
        "shorter": str(max(len(body) // 2, 1)).encode(),
        "garbage": b"12abc",
        "negative": b"-5",
        "twice": str(len(body)).encode() + b"\r\nContent-Length: 3",
        "huge": b"9" * 30,
    }[declared]
    headers = [*_headers(live, body), (b"Content-Length", length)]
    answer = live.send(request_bytes(URL, body, headers=headers, content_length=False))
    if declared == "huge":
        _refused(live, answer, 413, "too_large")
    elif declared in ("longer", "shorter", "garbage", "negative"):
        _refused(live, answer, 400, "invalid_json")
    else:
        assert answer.status in (200, 400, 401, 422)


@FUZZ
@given(
    size=st.integers(LIMIT + 1, 2 * LIMIT),
    chunk=st.integers(1, 8192),
)
def test_a_chunked_body_past_the_limit_is_too_large(live: Live, size: int, chunk: int) -> None:
    body = b'{"code":200,"msg":"' + b"a" * size + b'"}'
    sizes = [chunk] * (len(body) // chunk + 1)
    headers = [*_headers(live, b""), (b"Transfer-Encoding", b"chunked")]
    raw = request_bytes(URL, _chunked(body, sizes), headers=headers, content_length=False)
    answer = live.send(raw)
    _refused(live, answer, 413, "too_large")


@pytest.mark.parametrize(("extra", "status"), [(b"", 200), (b" ", 413), (b"garbage" * 100, 413)])
def test_a_chunked_body_is_read_up_to_the_limit_and_not_cut_short(
    live: Live, extra: bytes, status: int
) -> None:
    """A body that is valid JSON at the limit and goes on past it is refused, not read cut short."""
    callback = encode(build_callback("complete", tracks=1))
    body = callback + b" " * (LIMIT - len(callback)) + extra
    headers = [*_headers(live, callback), (b"Transfer-Encoding", b"chunked")]
    raw = request_bytes(URL, _chunked(body, [4096] * 8), headers=headers, content_length=False)
    answer = live.send(raw)
    assert answer.status == status, answer
    if status == 413:
        _refused(live, answer, 413, "too_large")


@FUZZ
@given(music_callbacks(), st.lists(st.integers(1, 512), min_size=1, max_size=8))
def test_a_chunked_callback_within_the_limit_is_read(
    live: Live, payload: dict[str, Any], sizes: list[int]
) -> None:
    body = encode(payload)
    headers = [*_headers(live, body), (b"Transfer-Encoding", b"chunked")]
    answer = live.send(
        request_bytes(URL, _chunked(body, sizes), headers=headers, content_length=False)
    )
    assert answer.status in (200, 401, 422)


@FUZZ
@given(st.sampled_from([b"zz\r\n", b"-1\r\n", b"\r\n", b"ffffffffffffffffffff\r\n", b"5\r\nab"]))
def test_a_malformed_chunk_is_refused(live: Live, chunk: bytes) -> None:
    headers = [*_headers(live, b""), (b"Transfer-Encoding", b"chunked")]
    answer = live.send(request_bytes(URL, chunk, headers=headers, content_length=False))
    assert answer.status in (400, 401, 413)


# --- the cheap refusals come first ---------------------------------------------------------------


@FUZZ
@given(
    token=st.sampled_from(["", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "%00"]),
    body=st.binary(max_size=256) | music_callbacks().map(encode),
)
def test_without_the_token_nothing_else_is_learned(live: Live, token: str, body: bytes) -> None:
    answer = live.send(
        request_bytes(f"/music-callback?token={token}", body, headers=_headers(live, body))
    )
    _refused(live, answer, 401, "unauthorized")


def test_an_oversized_declared_body_is_refused_before_it_is_read(live: Live) -> None:
    """The server answers 413 on the headers alone, and never waits for the 10 MB."""
    headers = [*_headers(live, b""), (b"Content-Length", str(10 * 1024 * 1024).encode())]
    started = time.monotonic()
    answer = live.send(request_bytes(URL, b"{", headers=headers, content_length=False))
    assert time.monotonic() - started < 5
    _refused(live, answer, 413, "too_large")


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"BREW"])
def test_other_methods_are_not_served(live: Live, method: bytes) -> None:
    answer = live.send(request_bytes(URL, b"{}", method=method))
    assert answer.status in (200, 405, 501) if method == b"OPTIONS" else answer.status in (405, 501)
