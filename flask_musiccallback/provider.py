"""The provider's API as a client: one place that sends a request and reads its answer.

Polling, confirming a callback, ``doctor`` and submitting a task all talk to the same API, with the
same key, and get the same envelope back (``{code, msg, data}``), whose ``code`` says whether the
request worked whatever the HTTP status was. How an answer is judged, and what a person is told
about a refusal, is decided here once: each caller only says which error type its failures are
(:class:`PollError` for reading a record, :class:`SubmitError` for creating a task), so that a
caller catches one type and reads one ``code`` and one ``message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import httpx

from .config import ConfigKeys, ConfigurationError, Settings

#: Seconds to wait for the provider: a short connect, and well under a minute overall.
DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=5.0)

#: Provider answer codes (the HTTP status, or the body's ``code``), what they mean, and whether
#: asking again later can help.
PROVIDER_ERRORS: Mapping[int, tuple[str, bool]] = MappingProxyType(
    {
        400: ("the provider refused the request as invalid", False),
        401: ("the provider refused the API key; check MUSICCALLBACK_API_KEY", False),
        403: ("the provider refused access with this API key", False),
        404: ("the provider does not know this endpoint; check MUSICCALLBACK_API_BASE_URL", False),
        405: ("the provider's rate limit is exceeded", True),
        413: ("the provider refused the request as too long (a prompt, a style, a title)", False),
        429: ("the provider answered 429: too many requests, or no credits left", True),
        430: ("the provider says calls are too frequent (it allows about 20 per 10 s)", True),
        455: ("the provider is under maintenance", True),
    }
)


class ProviderError(Exception):
    """The provider could not be asked, or refused, or its answer cannot be used.

    ``code`` is the provider's (the HTTP status, or the answer's ``code``), ``None`` when no
    answer came; ``message`` is the provider's own ``msg``, empty when it gave none. ``retryable``
    says whether asking again later may succeed (rate limits, maintenance, server errors, network
    trouble); ``retry_after`` is the provider's own hint in seconds, if any.
    """

    def __init__(
        self,
        text: str,
        *,
        code: int | None = None,
        message: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(text)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class PollError(ProviderError):
    """A task's record could not be read from the provider (polling, confirmation, doctor)."""


class SubmitError(ProviderError):
    """A submission the provider refused, or did not answer, or answered with no task id:
    nothing was registered. Without an answer (``code`` ``None``, ``retryable``) the task may
    still have been created; look before submitting it again."""


def provider_error(
    code: int,
    msg: str = "",
    retry_after: float | None = None,
    *,
    kind: type[ProviderError] = PollError,
) -> ProviderError:
    """The error of type ``kind`` for a provider answer code, with a message a person can act
    on."""
    if code in PROVIDER_ERRORS:
        text, retryable = PROVIDER_ERRORS[code]
    elif code >= 500:
        text, retryable = "the provider had a server error", True
    else:
        text, retryable = "the provider refused the request", False
    detail = f" ({code}{': ' + msg if msg else ''})"
    return kind(
        text + detail, code=code, message=msg, retryable=retryable, retry_after=retry_after
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date: back off by our own schedule


class ProviderClient:
    """A connection to the provider's API, kept open across the requests of a watch."""

    def __init__(
        self, api_key: str, base_url: str, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "flask-musiccallback",
            },
            timeout=timeout,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        needed_for: str = "Polling",
    ) -> ProviderClient:
        """The client an app's configuration describes; ``needed_for`` (what the caller does)
        says, when no API key is set, what needs one."""
        if not settings.api_key:
            raise ConfigurationError(
                f"{needed_for} needs the provider's API key: set {ConfigKeys.API_KEY}."
            )
        return cls(settings.api_key, settings.api_base_url, timeout=timeout)

    def record_info(self, task_id: str, path: str) -> dict[str, Any]:
        """The answer of the record endpoint at ``path`` for ``task_id``, once the provider
        said it succeeded; :class:`PollError` otherwise."""
        return self._answer(PollError, "GET", path, params={"taskId": task_id})

    def submit(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to posting ``payload`` to ``path``, once the provider said it created the
        task; :class:`SubmitError` otherwise.

        Never retried here: a request whose answer was lost may have created a task, and sending
        it again would create (and charge for) a second one.
        """
        return self._answer(SubmitError, "POST", path, json=dict(payload))

    def _answer(
        self, kind: type[ProviderError], method: str, path: str, **request: Any
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **request)
        except (httpx.InvalidURL, ValueError) as exc:  # not a path; a payload JSON cannot carry
            raise kind(f"the request cannot be sent as it is: {exc}") from None
        except httpx.TimeoutException:
            raise kind(
                f"the provider at {self.base_url} did not answer in time", retryable=True
            ) from None
        except httpx.HTTPError as exc:
            raise kind(
                f"cannot reach the provider at {self.base_url}: {exc}", retryable=True
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        msg = body.get("msg") if isinstance(body, dict) else None
        msg = msg if isinstance(msg, str) else ""
        if not response.is_success:
            raise provider_error(response.status_code, msg, _retry_after(response), kind=kind)
        if not isinstance(body, dict):
            raise kind(f"the provider's answer is not a JSON object (HTTP {response.status_code})")
        code = body.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and code != 200:
            raise provider_error(code, msg, _retry_after(response), kind=kind)
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
