"""Callbacks as the provider sends them: realistic bodies, and the credentials an app requires.

``flask musiccallback simulate``, the example app and the testing kit all deliver through this
module, so it is production code: it needs Flask only, never pytest. :func:`build_callback`
produces what real traffic looks like (epoch-millisecond ``createTime``, every track field), not
the friendlier shape of the vendor docs, and :func:`post_callback` goes through the app's real
endpoint, source checks and deduplication included.

:func:`deliver_stages` delivers a task's callbacks as the provider does on its bad days
(:class:`BadDay`): a stage never sent, stages out of order, one callback twice at once, all of
them late. Each is a case the receiver must survive and reconciliation must repair, so a host can
watch it happen in development rather than learn it in production.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask

from .events import Stage
from .families import MUSIC_NAME, Family, built_in, find_task_id
from .families.examples import SIMULATED_MEDIA_HOST as SIMULATED_MEDIA_HOST
from .families.examples import SIMULATED_MEDIA_ORIGIN
from .state import get_state
from .verify import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse


def build_callback(
    stage: Stage | str = "complete",
    *,
    family: str | Family = MUSIC_NAME,
    task_id: str | None = None,
    tracks: int = 2,
    code: int | None = None,
    msg: str | None = None,
    reseller: str = "sunoapi",
    media_base: str | None = None,
) -> dict[str, Any]:
    """A realistic callback body of ``family`` for ``stage`` (``complete``, ``failed``; music
    also ``text`` and ``first``), spelled as ``reseller`` (``"sunoapi"`` or ``"kie"``) sends it.

    ``tracks`` is how many results a success carries where a family has several (tracks, lyrics,
    images); ``code`` defaults to 200, or to the family's failure code for ``failed``. ``family``
    is a built-in family's name, or a :class:`~.families.base.Family` of the host's own that has
    an ``example``. Media links point at :data:`~.families.examples.SIMULATED_MEDIA_HOST`, or
    under ``media_base`` (:func:`rebase_media`).
    """
    kind = built_in(family) if isinstance(family, str) else family
    if kind.example is None:
        raise ValueError(f"The {kind.name} family has no example bodies.")
    body = kind.example(
        str(stage),
        task_id=task_id or uuid.uuid4().hex,
        code=code,
        msg=msg,
        reseller=reseller,
        count=tracks,
    )
    return body if media_base is None else rebase_media(body, media_base)


def rebase_media(body: Any, base: str) -> Any:
    """``body`` with every simulated media link moved under ``base``:
    ``https://cdn.example.invalid/NAME.mp3`` becomes ``{base}/NAME.mp3``.

    ``MUSICCALLBACK_SIMULATED_MEDIA_URL``: for an app that serves stand-ins for simulated media
    (the example app does), so that they are fetched over real HTTP, through the media archive's
    checks, as the provider's would be. Rewriting the finished body, rather than each family's
    example, moves the links of a host's own family too.
    """
    if isinstance(body, str):
        if body.startswith(f"{SIMULATED_MEDIA_ORIGIN}/"):
            return base.rstrip("/") + body[len(SIMULATED_MEDIA_ORIGIN) :]
        return body
    if isinstance(body, Mapping):
        return {key: rebase_media(value, base) for key, value in body.items()}
    if isinstance(body, list):
        return [rebase_media(value, base) for value in body]
    return body


class _Stamps:
    """The signature timestamps handed out per task, so that each signature is a delivery's own.

    The provider signs a delivery when it sends it, and a task's stages come seconds or minutes
    apart; a simulation sends them within one second, where a timestamp of "now" would give two
    bodies one signature, which the endpoint refuses (one signature, one body). So a timestamp
    used already for the task is moved a second back, well inside the window. Bounded: the
    tasks signed longest ago are forgotten first.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._used: OrderedDict[str, set[int]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, task_id: str, now: int) -> int:
        with self._lock:
            used = {stamp for stamp in self._used.pop(task_id, set()) if stamp > now - 600}
            stamp = now
            while stamp in used:
                stamp -= 1
            used.add(stamp)
            self._used[task_id] = used
            if len(self._used) > self._size:
                self._used.popitem(last=False)
            return stamp


_stamps = _Stamps()


def signature_headers(
    task_id: str, key: str | bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The kie.ai HMAC headers for ``task_id``, signed now unless ``timestamp`` is given.

    Signed now, each call for a task gets a timestamp of its own (:class:`!_Stamps`), as each of
    the provider's deliveries has; reuse the headers to send the very same delivery again.
    """
    stamp = str(_stamps.take(task_id, int(time.time())) if timestamp is None else timestamp)
    secret = key.encode() if isinstance(key, str) else key
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, task_id, stamp)}


@dataclass(frozen=True)
class Credentials:
    """What a request must carry to pass an app's source checks, as the provider would send it."""

    #: Query arguments to add to the callback URL (the first configured token).
    query: Mapping[str, str] = field(default_factory=dict)
    #: Headers to send (a fresh kie.ai signature made with the first configured HMAC key).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: An address inside ``MUSICCALLBACK_ALLOWED_IPS`` for in-process requests to come from.
    remote_addr: str = "127.0.0.1"


def callback_credentials(app: Flask, payload: Mapping[str, Any]) -> Credentials:
    """The token, signature and source address that ``app``'s configuration requires.

    The first token and key are used, as the provider would use the one in its settings; the
    signature is made now over the payload's task id, so it is inside the timestamp window.
    """
    settings = get_state(app).settings
    query = {"token": settings.tokens[0].decode()} if settings.tokens else {}
    headers: dict[str, str] = {}
    task_id = find_task_id(payload)
    if settings.hmac_keys and task_id:
        headers.update(signature_headers(task_id, settings.hmac_keys[0]))
    remote_addr = "127.0.0.1"
    networks = settings.allowed_networks
    if networks and not any(ipaddress.ip_address(remote_addr) in net for net in networks):
        remote_addr = str(networks[0].network_address)
    return Credentials(query=query, headers=headers, remote_addr=remote_addr)


def post_callback(
    app: Flask,
    payload: Mapping[str, Any],
    *,
    client: FlaskClient | None = None,
    authenticate: bool = True,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
) -> TestResponse:
    """Post ``payload`` to ``app``'s own endpoint in this process, as the provider would.

    Through Flask's test client rather than a socket, so ``simulate`` needs no server running, and
    yet every check, the deduplication and the receivers run as for real traffic. The answer comes
    as soon as the endpoint gives it: under ``thread`` dispatch the receivers may still be running.
    ``authenticate=False`` sends no token and no signature, as a stranger would; ``headers`` and
    ``query`` (``{"family": "lyrics"}``, as a family's callback URL has it) are added last and win.
    """
    credentials = callback_credentials(app, payload) if authenticate else Credentials()
    client = client if client is not None else app.test_client()
    return client.post(
        get_state(app).settings.url_rule,
        query_string={**credentials.query, **(query or {})},
        json=dict(payload),
        headers={**credentials.headers, **(headers or {})},
        environ_base={"REMOTE_ADDR": credentials.remote_addr},
    )


#: (status code, body) of one answer of the endpoint.
Answer = tuple[int, str]

#: The stages a music task's callbacks go through when nothing else is asked: its usual life.
MUSIC_STAGES = ("text", "first", "complete")


def default_stages(family: Family) -> tuple[str, ...]:
    """The callbacks a task of ``family`` gets on a good day, in order: music's three stages,
    another family's first (its result; a voice's phrase to record)."""
    return MUSIC_STAGES if family.name == MUSIC_NAME else family.stages[:1]


def post_over_http(
    app: Flask,
    url: str,
    payload: Mapping[str, Any],
    *,
    query: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> Answer:
    """Post ``payload`` to ``url`` over HTTP as the provider would, with ``app``'s credentials:
    its token unless ``url`` carries one, a fresh signature when it checks one, and ``query``
    for what the URL does not say already (``{"family": "lyrics"}``).

    For a server in another process, or the app's own server calling itself back (the example
    app's fake provider). Raises ``httpx.HTTPError`` when no answer comes.
    """
    import httpx  # loaded only by what delivers over HTTP

    target = httpx.URL(url)
    credentials = callback_credentials(app, payload)
    params = {} if "token" in target.params else dict(credentials.query)
    params.update({k: v for k, v in (query or {}).items() if k not in target.params})
    # Merged into the URL's own query: httpx's ``params=`` would replace it, token and all.
    response = httpx.post(
        target.copy_merge_params(params),
        json=dict(payload),
        headers=dict(credentials.headers),
        timeout=timeout,
    )
    return response.status_code, response.text


#: Seconds after its first failed attempt at which the provider stops calling back: retries 1, 5
#: and 15 minutes after the failure (PROVIDER.md section 1).
PROVIDER_RETRY_WINDOW = 21 * 60

#: How long ``simulate --late`` holds callbacks when given no delay: a minute past that window, so
#: what arrives could not have come from the provider's retries.
PAST_RETRY_WINDOW = PROVIDER_RETRY_WINDOW + 60


@dataclass(frozen=True)
class BadDay:
    """How the provider mistreats one task's callbacks; the faults combine freely.

    The default delivers every stage once, in order, at once: a good day.
    """

    #: Stages never sent: the callback lost on the way, or the receiver down until the provider's
    #: retries ran out. Only reconciliation finds them.
    drop: frozenset[str] = frozenset()
    #: Send the stages last first (``complete`` before ``first``), as retries of an earlier stage
    #: overtaken by a later one arrive.
    out_of_order: bool = False
    #: Post each callback twice at the same moment, from two threads: a retry racing the original
    #: whose answer the provider did not wait for.
    twice: bool = False
    #: Seconds to hold the callbacks before the first is sent.
    late: float = 0.0

    def order(self, stages: Sequence[str]) -> list[str]:
        """The stages in the order they come, dropped ones included (they are reported too)."""
        return list(reversed(stages)) if self.out_of_order else list(stages)


@dataclass(frozen=True)
class Delivery:
    """What became of one stage's callback."""

    stage: str
    #: The endpoint's answers: none for a dropped stage, two for one sent twice.
    answers: tuple[Answer, ...]
    #: Seconds it was held back before it was sent.
    late: float = 0.0

    @property
    def dropped(self) -> bool:
        return not self.answers


def deliver_stages(
    stages: Sequence[str],
    build: Callable[[str], Mapping[str, Any]],
    send: Callable[[Mapping[str, Any]], Answer],
    bad_day: BadDay = BadDay(),
    *,
    wait: Callable[[float], None] = time.sleep,
) -> Iterator[Delivery]:
    """Deliver a task's ``stages`` through ``send`` as ``bad_day`` says, one at a time, lazily.

    ``build`` makes a stage's body, once: a callback sent twice is the same body twice, as the
    provider's retries are (with an HMAC key, two bodies under one signature would be refused as a
    forgery). The wait of ``late`` happens once, before the first stage sent; ``send`` must be
    safe to call from two threads at once when ``twice`` is set.
    """
    held = bad_day.late
    for stage in bad_day.order(stages):
        if stage in bad_day.drop:
            yield Delivery(stage, ())
            continue
        body = build(stage)
        if held:
            wait(held)
        answers = send_concurrently(send, body) if bad_day.twice else (send(body),)
        yield Delivery(stage, answers, late=bad_day.late)
        held = 0.0


def send_concurrently(
    send: Callable[[Mapping[str, Any]], Answer], body: Mapping[str, Any], copies: int = 2
) -> tuple[Answer, ...]:
    """Post ``body`` ``copies`` times at the same moment, each from its own thread, and return
    every answer (in the order of the threads, not of their arrival).

    A barrier releases the threads together, so the copies race through the endpoint's claim
    rather than follow one another. An exception in any thread is raised here.
    """
    start = threading.Barrier(copies)

    def one() -> Answer:
        start.wait()
        return send(body)

    with ThreadPoolExecutor(copies, thread_name_prefix="simulate-twice") as pool:
        futures = [pool.submit(one) for _ in range(copies)]
        return tuple(future.result() for future in futures)
