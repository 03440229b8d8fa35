"""Rounds end to end, as the validator chains the arena's functions (judge, advance, settle):
fixed reports in, exact standings and weight vectors out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cacheon.arena import (
    ArenaParams,
    Call,
    Change,
    ChangeKind,
    Contender,
    Evidence,
    History,
    Holder,
    LaunchNoise,
    Loss,
    RoundResult,
    Standings,
    advance,
    bounds,
    judge,
    pooled_sigma,
    settle,
    weights,
)
from cacheon.protocol import (
    Block,
    Contestant,
    ContestantResult,
    Digest,
    Hotkey,
    JobSpec,
    Launch,
    LevelMeasurement,
    Outcome,
    Role,
    RoundReport,
    Uid,
)


def digest(tag: str) -> Digest:
    return Digest("sha256:" + tag * 64)


BASELINE = digest("0")
ALICE, BOB, CAROL = (
    Holder(Hotkey(n), digest(t)) for n, t in (("alice", "a"), ("bob", "b"), ("carol", "c"))
)
OWNER = Hotkey("owner")
UIDS = {OWNER: Uid(0), ALICE.hotkey: Uid(3), BOB.hotkey: Uid(7), CAROL.hotkey: Uid(12)}


@dataclass
class Validator:
    """The bookkeeping the daemon keeps between rounds, reduced to what the arena needs."""

    params: ArenaParams
    standings: Standings = field(default_factory=Standings)
    calls: dict[Digest, Call] = field(default_factory=dict)
    pairs: list[float] = field(default_factory=list)
    tests: dict[Digest, Evidence] = field(default_factory=dict)
    vs_baseline: dict[Digest, Evidence] = field(default_factory=dict)
    passing: dict[Holder, bool] = field(default_factory=dict)
    behaves_like: dict[Digest, frozenset[Digest]] = field(default_factory=dict)
    first_seen: dict[Holder, int] = field(default_factory=dict)
    crowned: tuple[Holder, ...] = ()
    """Who crowned in the last round, installed or not."""

    def round(
        self,
        runs: list[tuple[Holder | None, float, str | None]],
        failed: frozenset[Holder] = frozenset(),
        registered: frozenset[Hotkey] = frozenset(UIDS),
    ) -> tuple[Change, ...]:
        job, report = self._job_and_report(runs, failed)
        for entry in {h for h, _, _ in runs if h is not None}:
            self.passing[entry] = entry not in failed
            self.first_seen.setdefault(entry, len(self.first_seen))
        noise = LaunchNoise.known(pooled_sigma(self.pairs, self.params.sigma_floor))
        history = History(dict(self.tests), dict(self.vs_baseline))
        judged = judge(job, RoundResult("r", report), self.params, noise, history)
        assert judged.void is None
        self.pairs.extend(judged.pairs)
        for j in judged.judgements:
            if j.vs_baseline is not None:
                self.vs_baseline[j.holder.digest] = j.vs_baseline
            if j.behaves_like is not None:
                flags = self.behaves_like.get(j.holder.digest, frozenset())
                self.behaves_like[j.holder.digest] = flags | {j.behaves_like}
        contenders = [
            Contender(
                h,
                Block(self.first_seen[h]),
                ok,
                bounds(self.vs_baseline[h.digest], noise.core, self.params.alpha).lower
                if h.digest in self.vs_baseline
                else None,
                self.behaves_like.get(h.digest, frozenset()),
            )
            for h, ok in self.passing.items()
        ]
        self.crowned = tuple(crown.holder for crown in judged.crowns)
        moved = advance(self.standings, contenders, judged.crowns, registered, BASELINE)
        for j in settle(judged, moved).judgements:
            if j.decision is not None:
                self.tests[j.holder.digest] = j.decision.evidence
                self.calls[j.holder.digest] = j.decision.call
        self.standings = moved.standings
        return moved.changes

    def weights(self, registered: frozenset[Hotkey] = frozenset(UIDS)) -> dict[Uid, float]:
        metagraph = {k: v for k, v in UIDS.items() if k in registered}
        return weights(self.standings, metagraph, OWNER, self.params.leader_share)

    def _holder(self, d: Digest) -> Holder:
        return next(h for h in self.passing if h.digest == d)

    def _job_and_report(
        self, runs: list[tuple[Holder | None, float, str | None]], failed: frozenset[Holder]
    ) -> tuple[JobSpec, RoundReport]:
        keys: dict[Holder | None, str] = {None: "B"}
        if self.standings.leader is not None:
            keys[self.standings.leader] = "L"
        contestants, launches, results = {}, [], {}
        # what the agent's gate reports: identical outputs to the leader's make a copy of "L"
        leader_outputs = {out for who, _, out in runs if keys.get(who) == "L"} - {None}
        for index, (who, speed, outputs) in enumerate(runs):
            key = keys.setdefault(who, f"C{index}")
            role = Role.BASELINE if who is None else Role.LEADER if key == "L" else Role.CHALLENGER
            image = BASELINE if who is None else who.digest
            hotkey = None if who is None else who.hotkey
            contestants[key] = Contestant(
                key=key, role=role, hotkey=hotkey, image=f"docker.io/x/y@{image}"
            )
            launches.append(
                Launch(
                    index=index,
                    contestant=key,
                    started_ns=index * 1000,
                    ended_ns=index * 1000 + 500,
                    levels=(LevelMeasurement(concurrency=1, block=0, speed=speed, requests=8),),
                )
            )
            copies = key != "L" and outputs in leader_outputs
            results[key] = ContestantResult(
                key=key,
                outcome=Outcome.FAIL if who in failed else Outcome.PASS,
                copy_of="L" if copies else None,
            )
        job = JobSpec(
            round_id="r",
            seed="00",
            served_model_name="m",
            model_path="/m",
            max_model_len=4096,
            contestants=tuple(contestants.values()),
            launch_order=tuple(launch.contestant for launch in launches),
        )
        return job, RoundReport(
            round_id="r", launches=tuple(launches), results=tuple(results.values())
        )


def test_a_season(params: ArenaParams) -> None:
    v = Validator(params)
    # 1. no incumbent: 30% over the baseline crowns at once, 10% makes a runner-up
    changes = v.round([(None, 1.0, None), (ALICE, 1.3, "a"), (BOB, 1.1, "b"), (None, 1.0, None)])
    assert changes == (Change(ChangeKind.CROWNED, ALICE),)
    assert v.standings == Standings(ALICE, BOB)
    assert v.weights() == {Uid(3): 0.8, Uid(7): pytest.approx(0.2)}

    # 2. carol behaves exactly like alice: as fast, but never the runner-up behind her
    changes = v.round(
        [
            (None, 1.0, None),
            (ALICE, 1.3, "a"),
            (CAROL, 1.3, "a"),
            (ALICE, 1.3, "a"),
            (None, 1.0, None),
        ]
    )
    assert changes == ()
    assert v.standings == Standings(ALICE, BOB)
    assert v.tests[CAROL.digest].against == ALICE.digest

    # 3. alice fails correctness: bob is promoted, carol's flag no longer applies
    changes = v.round(
        [(None, 1.0, None), (ALICE, 1.5, "x"), (ALICE, 1.5, "x"), (None, 1.0, None)],
        failed=frozenset({ALICE}),
    )
    assert changes == (
        Change(ChangeKind.DETHRONED, ALICE, Loss.FAILED),
        Change(ChangeKind.PROMOTED, BOB),
    )
    assert v.standings == Standings(BOB, CAROL)
    assert v.weights() == {Uid(7): 0.8, Uid(12): pytest.approx(0.2)}

    # 4. bob deregisters: carol leads alone, then nobody does and everything burns
    gone = frozenset(UIDS) - {BOB.hotkey}
    changes = v.round(
        [(None, 1.0, None), (BOB, 1.1, "b"), (BOB, 1.1, "b"), (None, 1.0, None)], registered=gone
    )
    assert changes == (
        Change(ChangeKind.DETHRONED, BOB, Loss.DEREGISTERED),
        Change(ChangeKind.PROMOTED, CAROL),
    )
    assert v.weights(gone) == {Uid(12): 1.0}
    emptied = gone - {CAROL.hotkey}
    v.round(
        [(None, 1.0, None), (CAROL, 1.3, "a"), (CAROL, 1.3, "a"), (None, 1.0, None)],
        registered=emptied,
    )
    assert v.standings == Standings()
    assert v.weights(emptied) == {Uid(0): 1.0}


def test_a_copy_of_the_leader_is_not_crowned_on_noise(params: ArenaParams) -> None:
    # the copy reads 1.5% faster in every other launch: noise, never enough to clear the moat
    v = Validator(params)
    v.round([(None, 1.0, None), (ALICE, 1.3, None), (None, 1.0, None)])
    assert v.standings == Standings(ALICE, None)
    rounds = 0
    while v.calls.get(CAROL.digest, Call.PENDING) is Call.PENDING:
        edge = 1.015 if rounds % 2 == 0 else 0.995
        runs = [(ALICE, 1.3, None), (CAROL, 1.3 * edge, None), (ALICE, 1.3, None)]
        v.round([(None, 1.0, None), *runs, (None, 1.0, None)])
        rounds += 1
        assert v.standings.leader == ALICE
    assert v.calls[CAROL.digest] is Call.NOT_FASTER
    assert rounds <= params.max_launches
    assert v.standings == Standings(ALICE, CAROL)


def test_two_crowns_in_one_round_install_the_faster(params: ArenaParams) -> None:
    # bob (+6.7%) has been pending for three rounds; carol (+21%) arrives in his fourth. Both
    # crown; the cumulative bounds come from different looks (bob's is tighter), so the new
    # leader is decided on this round's launches, and bob stays pending against carol
    v = Validator(params)
    v.round([(None, 1.0, None), (ALICE, 1.3, None), (None, 1.0, None)])
    for _ in range(3):
        v.round(
            [(None, 1.0, None), (ALICE, 1.3, None), (BOB, 1.3 * 1.067, None), (ALICE, 1.3, None),
             (None, 1.0, None)]
        )  # fmt: skip
        assert v.calls[BOB.digest] is Call.PENDING
    changes = v.round(
        [(None, 1.0, None), (ALICE, 1.3, None), (BOB, 1.3 * 1.067, None),
         (CAROL, 1.3 * 1.21, None), (ALICE, 1.3, None), (None, 1.0, None)]
    )  # fmt: skip
    assert set(v.crowned) == {BOB, CAROL}
    assert changes == (Change(ChangeKind.CROWNED, CAROL),)
    assert v.standings.leader == CAROL
    assert v.calls[BOB.digest] is Call.PENDING  # not installed: pending against carol
    assert v.tests[BOB.digest].against == ALICE.digest  # its evidence against alice is closed


def test_a_crown_over_a_leader_that_deregisters_in_the_same_round_installs_it(
    params: ArenaParams,
) -> None:
    v = Validator(params)
    v.round([(None, 1.0, None), (ALICE, 1.3, None), (BOB, 1.1, None), (None, 1.0, None)])
    assert v.standings == Standings(ALICE, BOB)
    gone = frozenset(UIDS) - {ALICE.hotkey}
    changes = v.round(
        [(None, 1.0, None), (ALICE, 1.3, None), (CAROL, 2.6, None), (ALICE, 1.3, None),
         (None, 1.0, None)],
        registered=gone,
    )  # fmt: skip
    assert changes == (
        Change(ChangeKind.DETHRONED, ALICE, Loss.DEREGISTERED),
        Change(ChangeKind.CROWNED, CAROL),
    )
    assert v.standings == Standings(CAROL, BOB)  # not the slower runner-up promoted
