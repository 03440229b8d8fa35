"""An upgrade mid-season (issue 18, finding 4): a new evaluation version and a lower
`max_launches` on the devnet, and the daemon carries on; a round whose persisted data cannot be
concluded is voided with its reason instead of wedging recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cacheon.arena import Deferral, Queued, select_challengers
from cacheon.protocol import Block, Digest, Hotkey, Outcome, ReasonCode
from cacheon.validator.daemon import Daemon
from cacheon.validator.state import EvidenceKind, RoundRecord, RoundState
from tests.web.web_season import build_daemon, build_season, play_round, running


def _digest(daemon: Daemon, hotkey: str) -> Digest:
    (record,) = [
        r for r in daemon.state.submissions(current_only=True) if r.submission.hotkey == hotkey
    ]
    return record.submission.digest


def test_an_upgrade_mid_season_restarts_evidence_and_the_daemon_carries_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        season = await build_season(tmp_path)
        before = season.daemon
        close, steady = Hotkey(season.hotkeys["close"]), Hotkey(season.hotkeys["steady"])
        # under the old rules steady was ruled not faster, close is still pending
        for hotkey, reason in ((steady, ReasonCode.NOT_FASTER), (close, ReasonCode.PENDING)):
            verdict = before.state.latest_verdict(hotkey, _digest(before, hotkey))
            assert verdict is not None
            assert verdict.reason is reason
        old_version = before.version
        await before.parts.chain.close()
        before.parts.db.close()

        # the operator lowers max_launches (a verdict rule): a new evaluation version
        arena = season.settings.arena.model_copy(update={"max_launches": 1})
        after = build_daemon(season.settings.model_copy(update={"arena": arena}))
        assert after.version != old_version
        # a round the old process left behind whose job the new code cannot read
        after.state.begin_round(
            RoundRecord("r-broken", Block(1), "0x00", "00", "00", "00", RoundState.PLANNED, "{"),
            [],
        )
        await after.recover()  # never raises on persisted data
        broken = after.state.round("r-broken")
        assert broken is not None
        assert broken.state is RoundState.VOID
        assert "could not be concluded" in broken.detail

        # evidence belongs to its version: nobody carries launches over into the new rules,
        # and a re-evaluation waits for its cooldown like any new one
        _, standings = after.state.standings()
        assert standings.leader is not None
        for hotkey in (close, steady):
            assert after.state.evidence(_digest(after, hotkey), EvidenceKind.TEST) is None
        polled = await after.poller.poll(
            standings.leader.digest, frozenset({(standings.leader.hotkey, standings.leader.digest)})
        )
        queued = {q.submission.hotkey: q for q in polled.queue}
        for hotkey in (close, steady):
            assert queued[hotkey] == Queued(queued[hotkey].submission, 0, False)
        chain = await after.parts.chain.read_state()
        selection = select_challengers(
            polled.queue, after.state.last_started(), chain.block, 8, after.params
        )
        deferred = {s.hotkey: why for s, why in selection.deferred}
        assert deferred[steady] is Deferral.COOLDOWN

        # a round under the new rules decides within the lowered budget
        await play_round(after, "r4", ["close"], season.hotkeys, leader="fast")
        latest = after.state.latest_verdict(close, _digest(after, close))
        assert latest is not None
        assert latest.evaluation_version == after.version
        assert latest.outcome is Outcome.PASS
        assert latest.reason in (ReasonCode.NOT_FASTER, ReasonCode.CROWNED)

        # and the loop runs on
        async with running(after) as url:
            assert url.startswith("http://127.0.0.1:")
        after.parts.db.close()

    asyncio.run(scenario())
