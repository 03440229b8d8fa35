"""Pure parts of the pod layer: the HTTP adapter's retry rules, the budget, parsers, keys."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from cacheon.config import PodSettings
from cacheon.pods import (
    AnswerLost,
    BudgetExceeded,
    MalformedAnswer,
    Offer,
    PodConfigError,
    PodKeyError,
    ProviderAuthError,
    ProviderUnavailable,
    budget,
    build_providers,
    init_key,
    lium,
    load_key,
    targon,
)
from cacheon.pods.api import ApiClient, RetryPolicy, parse_list
from cacheon.pods.ledger import Lease, LeaseState
from cacheon.pods.static import parse_static_host
from cacheon.store.db import Database

FAST = RetryPolicy(attempts=3, backoff_s=0.0, max_wait_s=0.2)


def _client(handler, error_text=lium.error_text) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(
        "lium", "http://provider.invalid/api", headers={"X-API-KEY": "k"},
        error_text=error_text, timeout_s=1.0, retry=FAST,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip


def _run(client: ApiClient, method: str, *, idempotent: bool) -> httpx.Response:
    async def go() -> httpx.Response:
        try:
            return await client.call(method, "/pods", idempotent=idempotent)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_429_is_retried_after_retry_after_even_for_a_rent() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.1"}, json={"detail": "slow"})
        return httpx.Response(200, json=[])

    assert _run(_client(handler), "POST", idempotent=False).status_code == 200
    assert seen == ["POST", "POST"]


@pytest.mark.parametrize(
    ("idempotent", "error", "calls"),
    [(True, ProviderUnavailable, 3), (False, AnswerLost, 1)],
)
def test_5xx_is_retried_only_when_idempotent(idempotent: bool, error: type, calls: int) -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return httpx.Response(503, json={"error": {"code": "DOWN", "message": "maintenance"}})

    with pytest.raises(error, match="503: DOWN: maintenance"):
        _run(_client(handler), "POST", idempotent=idempotent)
    assert len(seen) == calls


def test_network_error_on_a_rent_is_an_answer_lost() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    with pytest.raises(AnswerLost, match="no answer"):
        _run(_client(handler), "POST", idempotent=False)


def test_rejected_key_names_the_call_and_the_envelope() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "reason": "bad token"})

    with pytest.raises(
        ProviderAuthError, match=r"GET /pods: API key rejected \(401: unauthorized: bad token\)"
    ):
        _run(_client(handler, targon.error_text), "GET", idempotent=True)


def test_malformed_answer_is_one_clear_line() -> None:
    response = httpx.Response(200, json=[{"id": "p1", "status": "RUNNING"}])
    with pytest.raises(MalformedAnswer) as caught:
        parse_list(response, lium._Pod, "lium GET /pods")
    assert "\n" not in str(caught.value)
    assert "lium GET /pods: unexpected answer (0.pod_name: Field required)" in str(caught.value)


def _lease(created: float, ended: float | None, price: float) -> Lease:
    return Lease("n", "lium", "o", "p", LeaseState.READY, price, None, created, created + 1e6,
                 None, None, ended, "")  # fmt: skip


def test_spend_counts_only_the_part_of_each_lease_inside_the_day() -> None:
    day = budget.day_start(1_800_000_000.0)
    assert day == 1_799_971_200.0  # 2027-01-15 00:00 UTC
    leases = [
        _lease(day - 3600, day + 3600, 10.0),  # 1 h of it today
        _lease(day + 7200, None, 20.0),  # still running: until now
        _lease(day - 7200, day - 3600, 99.0),  # yesterday only
    ]
    assert budget.spend(leases, day, day + 3 * 3600) == pytest.approx(10.0 + 20.0)


def test_budget_check_refuses_with_the_numbers() -> None:
    offer = Offer("targon", "h200-xlarge", "H200", 8, 25.0)
    budget.check(offer, 2, spent_today=40.0, daily_budget=90.0)
    with pytest.raises(
        BudgetExceeded, match=r"to \$100.00 \(spent \$50.00\), over pods.daily_budget_usd = \$90.00"
    ):
        budget.check(offer, 2, spent_today=50.0, daily_budget=90.0)


def test_parsers_of_addresses() -> None:
    host = parse_static_host("root@10.0.0.5:2222 ssh-ed25519 AAAAC3Nza")
    assert (host.user, host.host, host.port, host.host_key) == (
        "root",
        "10.0.0.5",
        2222,
        "ssh-ed25519 AAAAC3Nza",
    )
    with pytest.raises(ValueError, match="ssh-keyscan"):
        parse_static_host("root@10.0.0.5 ssh-ed25519 AAAA")
    assert lium.parse_ssh_command("ssh root@1.2.3.4 -p 40022") == ("root", "1.2.3.4", 40022)
    assert lium.parse_ssh_command("ssh root@pod.example") == ("root", "pod.example", 22)
    with pytest.raises(MalformedAnswer):
        lium.parse_ssh_command("ssh -i key root@host")


def test_key_is_private_and_reloadable(tmp_path: Path) -> None:
    path = tmp_path / "d" / "pod_ed25519"
    key, created = init_key(path)
    assert created
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert path.with_name("pod_ed25519.pub").read_text().strip() == key.public_line
    again, created = init_key(path)
    assert not created
    assert again.public_line == key.public_line
    path.chmod(0o644)
    with pytest.raises(PodKeyError, match="chmod 600"):
        load_key(path)
    with pytest.raises(PodKeyError, match="keys init"):
        load_key(tmp_path / "missing")


def test_missing_provider_settings_are_reported_together(tmp_path: Path) -> None:
    settings = PodSettings(providers=["targon", "lium", "static"], static_hosts=["nope"])
    with Database.open(tmp_path / "state.db") as db, pytest.raises(PodConfigError) as caught:
        build_providers(settings, db)
    message = str(caught.value)
    for part in (
        "CACHEON_PODS__TARGON_API_KEY",
        "CACHEON_PODS__LIUM_API_KEY",
        "lium_template_id",
        "'nope'",
    ):
        assert part in message
