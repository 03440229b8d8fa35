"""Build the configured providers, in order, from the settings.

The one place that reads provider secrets from the config, so a missing key or template is
reported up front as one line naming the setting, before any rent is tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import httpx
from pydantic import SecretStr

from cacheon import __version__
from cacheon.config import PodSettings
from cacheon.pods import lium, targon
from cacheon.pods.api import ApiClient, RetryPolicy
from cacheon.pods.base import PodError, Provider
from cacheon.pods.lium import LiumProvider
from cacheon.pods.static import StaticProvider, parse_static_host
from cacheon.pods.targon import TargonProvider
from cacheon.store.db import Database

T = TypeVar("T")


class PodConfigError(PodError):
    """A configured provider lacks what it needs; the message names the setting."""


def build_providers(
    settings: PodSettings,
    db: Database,
    retry: RetryPolicy | None = None,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> list[Provider]:
    """The providers of `pods.providers`, in that order. `transports` is the httpx test seam."""
    _check(settings)
    retry = retry or RetryPolicy()
    transports = transports or {}
    out: list[Provider] = []
    for name in settings.providers:
        if name == "targon":
            key = _required(settings.targon_api_key)
            out.append(_targon(settings, key, retry, transports.get(name)))
        elif name == "lium":
            key = _required(settings.lium_api_key)
            template = _required(settings.lium_template_id)
            out.append(_lium(settings, key, template, retry, transports.get(name)))
        else:
            out.append(_static(settings, db))
    return out


def _required(value: T | None) -> T:
    if value is None:
        raise PodConfigError("pods: a required provider setting is unset")
    return value


def _check(settings: PodSettings) -> None:
    """Every problem is found before any client is built, so nothing needs closing."""
    problems = []
    if "targon" in settings.providers and settings.targon_api_key is None:
        problems.append("targon needs an API key: set CACHEON_PODS__TARGON_API_KEY")
    if "lium" in settings.providers and settings.lium_api_key is None:
        problems.append("lium needs an API key: set CACHEON_PODS__LIUM_API_KEY")
    if "lium" in settings.providers and settings.lium_template_id is None:
        problems.append("lium needs pods.lium_template_id (a Docker-in-Docker template)")
    if "static" in settings.providers:
        if not settings.static_hosts:
            problems.append("static needs pods.static_hosts")
        for entry in settings.static_hosts:
            try:
                parse_static_host(entry)
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise PodConfigError("pods.providers: " + "; ".join(problems))


def _targon(
    settings: PodSettings,
    api_key: SecretStr,
    retry: RetryPolicy,
    transport: httpx.AsyncBaseTransport | None,
) -> Provider:
    host, _, port = settings.targon_ssh_gateway.rpartition(":")
    api = ApiClient(
        "targon",
        settings.targon_base_url,
        headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
        error_text=targon.error_text,
        timeout_s=settings.api_timeout_s,
        retry=retry,
        transport=transport,
    )
    return TargonProvider(api, settings.targon_image, host, int(port))


def _lium(
    settings: PodSettings,
    api_key: SecretStr,
    template_id: str,
    retry: RetryPolicy,
    transport: httpx.AsyncBaseTransport | None,
) -> Provider:
    api = ApiClient(
        "lium",
        settings.lium_base_url,
        headers={
            "X-API-KEY": api_key.get_secret_value(),
            "X-Source": "sdk",
            "X-Lium-Client-Version": f"cacheon/{__version__}",
        },
        error_text=lium.error_text,
        timeout_s=settings.api_timeout_s,
        retry=retry,
        transport=transport,
    )
    return LiumProvider(api, template_id)


def _static(settings: PodSettings, db: Database) -> Provider:
    return StaticProvider([parse_static_host(entry) for entry in settings.static_hosts], db)
