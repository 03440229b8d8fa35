"""The daemon's first round on real parts, in process: verdicts, standings, report, weights."""

from __future__ import annotations

import asyncio
import json

from cacheon.protocol import Outcome, PublicReport, ReasonCode
from cacheon.store.db import Database
from cacheon.testing.local_arena import NETUID, LocalArena
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon


def test_a_round_crowns_the_fastest_and_pays_0_8_0_2(local_arena: LocalArena) -> None:
    arena = local_arena
    arena.commit("fast", "second", "slow", "cheat", "malformed")
    arena.commit("copycat")
    settings = arena.settings()
    db = Database.open(state_path(settings))
    try:
        daemon = Daemon(settings, build_parts(settings, db))

        async def one_pass() -> None:
            await daemon.parts.leases.start()
            await daemon.recover()
            await daemon.one_pass()
            await daemon.parts.leases.close()
            await daemon.parts.chain.close()

        asyncio.run(one_pass())
        state = daemon.state
        latest = {}
        for v in reversed(state.verdicts()):
            latest[arena.name_of(v.hotkey)] = (v.outcome, v.reason)
        assert latest["malformed"] == (Outcome.FAIL, ReasonCode.BAD_COMMITMENT)
        assert latest["copycat"] == (Outcome.FAIL, ReasonCode.COPY_OF)
        assert latest["cheat"] == (Outcome.FAIL, ReasonCode.CONFORMANCE)
        assert latest["fast"] == (Outcome.PASS, ReasonCode.CROWNED)
        assert latest["second"][0] is Outcome.PASS
        assert latest["slow"] == (Outcome.PASS, ReasonCode.NOT_FASTER)

        _, standings = state.standings()
        assert standings.leader is not None
        assert standings.runner_up is not None
        assert arena.name_of(standings.leader.hotkey) == "fast"
        assert arena.name_of(standings.runner_up.hotkey) == "second"

        rows = arena.devnet.weights(NETUID, arena.devnet.head())
        ours = dict(rows[arena.validator.uid])
        fast, second = arena.participants["fast"].uid, arena.participants["second"].uid
        assert set(ours) == {fast, second}
        assert abs(ours[second] / ours[fast] - 0.25) < 0.001  # 0.2 / 0.8 after u16 scaling

        body = arena.services.s3.client().get_object(
            Bucket=arena.bucket, Key="cacheon/public/latest.json"
        )
        report = PublicReport.model_validate(json.loads(body["Body"].read()))
        assert report.leader is not None
        assert report.leader.hotkey == standings.leader.hotkey
        assert report.leader.speed_ratio is not None
        assert report.leader.speed_ratio > 1.5
        assert report.round is not None
        assert report.round.salt is not None
        assert len(report.round.launches) == len(report.round.launch_order)
        assert arena.lium.live_pods() == []
    finally:
        db.close()
