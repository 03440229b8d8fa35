"""Standings for an empty database: the last public report, ours or a configured one.

A validator whose state was lost (new machine, no export to import) must not burn the whole
emission until its first rounds re-crown someone: the public report it published last (from its
own bucket), or another validator's (`validator.standings_url`), says who led. The restored
places carry a PASS verdict marked as restored, so the next rounds defend them like any other.
"""

from __future__ import annotations

import asyncio

import httpx

from cacheon.arena import Holder, Standings
from cacheon.log import get_logger
from cacheon.protocol import Digest, Hotkey, Outcome, PublicReport, ReasonCode
from cacheon.store.objects import ObjectStore, ObjectStoreError
from cacheon.validator.state import ValidatorState, Verdict

log = get_logger("cacheon.validator.restore")

MAX_REPORT_BYTES = 16 << 20
LATEST = "public/latest.json"


async def restore_standings(
    state: ValidatorState,
    store: ObjectStore,
    *,
    netuid: int,
    evaluation_version: str,
    url: str | None,
) -> Standings | None:
    """Load standings into an empty state; None when there is state already or no report."""
    if state.standings()[0] is not None:
        return None
    report = await _ours(store) or await _theirs(url)
    if report is None:
        return None
    if report.netuid != netuid:
        log.warning("published report is for another netuid; not restored", netuid=report.netuid)
        return None
    places = [s for s in (report.leader, report.runner_up) if s is not None]
    holders = [Holder(Hotkey(s.hotkey), Digest(s.digest)) for s in places]
    standings = Standings(*holders) if holders else Standings()
    state.add_verdicts(
        Verdict(
            h.hotkey,
            h.digest,
            Outcome.PASS,
            ReasonCode.CROWNED,
            f"restored from the public report of block {report.block}",
            None,
            evaluation_version,
        )
        for h in holders
    )
    state.set_standings(standings, (), None)
    log.info("standings restored", block=report.block,
             leader=standings.leader and standings.leader.hotkey)  # fmt: skip
    return standings


async def _ours(store: ObjectStore) -> PublicReport | None:
    try:
        data = await asyncio.to_thread(store.get, f"{store.prefix}/{LATEST}", MAX_REPORT_BYTES)
    except ObjectStoreError as exc:
        log.warning("cannot read our last public report", reason=str(exc))
        return None
    return _parse(data, "our bucket")


async def _theirs(url: str | None) -> PublicReport | None:
    if url is None:
        return None
    try:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as http:
            response = await http.get(url)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("cannot fetch the configured standings report", url=url, reason=str(exc))
        return None
    return _parse(response.content, url)


def _parse(data: bytes | None, where: str) -> PublicReport | None:
    if data is None:
        return None
    try:
        return PublicReport.model_validate_json(data)
    except ValueError as exc:
        log.warning("unreadable public report; not restored", where=where, reason=str(exc)[:300])
        return None
