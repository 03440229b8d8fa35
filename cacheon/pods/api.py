"""The one HTTP adapter every provider client goes through: deadline, retries, error mapping.

Retry rules (the same as Lium's own SDK): a 429 is retried for every call, after the
`Retry-After` the server asked for; a 5xx or a network error is retried only for idempotent
calls. A non-idempotent call (a rent) that gets no answer raises `AnswerLost` instead, so the
caller looks the pod up by name rather than renting a second one.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from cacheon.log import get_logger
from cacheon.pods.base import (
    AnswerLost,
    MalformedAnswer,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
log = get_logger("cacheon.pods.api")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 1.0
    """First wait after a 5xx or network error; doubles each attempt."""
    max_wait_s: float = 60.0
    """Longest wait honoured, whatever `Retry-After` asks for."""


class _Retryable(Exception):
    def __init__(self, error: ProviderError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


ErrorText = Callable[[httpx.Response], str]
"""Turns a provider's error envelope into one line."""


class ApiClient:
    """One `httpx.AsyncClient` per provider; `transport` is the test seam."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        error_text: ErrorText,
        timeout_s: float,
        retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self._retry = retry
        self._error_text = error_text
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Accept": "application/json", **headers},
            timeout=timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request with retries; raise NotFound for a 404."""
        what = f"{self.provider} {method} {path}"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(
                        what,
                        method,
                        path,
                        idempotent=idempotent,
                        params=params,
                        json=json,
                        headers=headers,
                    )
        except _Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def lookup(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None
    ) -> httpx.Response | None:
        """An idempotent read where a 404 means "no such thing": None instead of NotFound."""
        try:
            return await self.call(method, path, idempotent=True, params=params)
        except NotFound:
            return None

    async def _once(
        self,
        what: str,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method, path, params=params, json=json, headers=headers
            )
        except httpx.TransportError as exc:
            reason = f"{what}: no answer ({type(exc).__name__}: {exc})"
            if not idempotent:
                raise AnswerLost(reason) from None
            log.warning("provider call failed, retrying", call=what, reason=str(exc))
            raise _Retryable(ProviderUnavailable(reason), None) from None
        status = response.status_code
        if status < 400:
            return response
        text = self._error_text(response)
        if status == 404:
            raise NotFound(f"{what}: not found ({text})")
        if status in (401, 403):
            raise ProviderAuthError(f"{what}: API key rejected ({status}: {text}); check the key")
        if status == 429:
            log.warning("provider rate-limited us, waiting", call=what)
            raise _Retryable(
                ProviderUnavailable(f"{what}: rate limited (429: {text})"),
                _retry_after(response),
            )
        if status >= 500:
            reason = f"{what}: server error ({status}: {text})"
            if not idempotent:
                raise AnswerLost(reason)
            log.warning("provider server error, retrying", call=what, status=status)
            raise _Retryable(ProviderUnavailable(reason), None)
        raise ProviderError(f"{what}: refused ({status}: {text})")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return float(min(exc.retry_after, self._retry.max_wait_s))
        backoff: float = self._retry.backoff_s * 2.0 ** (state.attempt_number - 1)
        return min(backoff, self._retry.max_wait_s)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse(response: httpx.Response, model: type[M], what: str) -> M:
    """Parse a JSON object answer, or raise MalformedAnswer naming the call."""
    return _validated(lambda: model.model_validate_json(response.content), what)


def parse_list(response: httpx.Response, model: type[M], what: str) -> list[M]:
    """Parse a JSON array answer, or raise MalformedAnswer naming the call."""
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    return _validated(lambda: list(adapter.validate_json(response.content)), what)


def _validated(validate: Callable[[], T], what: str) -> T:
    try:
        return validate()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise MalformedAnswer(
            f"{what}: unexpected answer ({where}: {first['msg']}); the provider API may have changed"
        ) from None
