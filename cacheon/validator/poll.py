"""Step 1 of the loop: read the chain at one block and turn commitments into a queue.

Every commitment is parsed (a malformed one is FAILed with its reason), its digest's first-seen
block is folded into our ledger, and each new digest is listed by the registry. Then the arena's
pre-screen (`arena.screen`, the same rule `cacheon-miner check` applies) fails what is missing,
too large or a copy, terminal verdicts under the same evaluation version are replayed, and what
is left, undecided, is the queue. Nothing here spends GPU money.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cacheon.arena import (
    Listing,
    Queued,
    Submission,
    Unlisted,
    first_seen,
    replay,
    screen,
    with_listing,
)
from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.commitments import Rejection, parse_reference, parse_submission
from cacheon.chain.commitments import Submission as ChainSubmission
from cacheon.chain.registry import fetch_manifest
from cacheon.config import Settings
from cacheon.log import get_logger
from cacheon.protocol import Digest, Hotkey, Outcome, ReasonCode, Uid
from cacheon.validator.screening import ManifestFetcher, list_image
from cacheon.validator.state import EvidenceKind, SubmissionRecord, ValidatorState, Verdict

log = get_logger("cacheon.validator.poll")

_CONTESTANT_REGISTRY_FAULTS = frozenset(
    {ReasonCode.MANIFEST_NOT_FOUND, ReasonCode.NO_AMD64_PLATFORM, ReasonCode.IMAGE_TOO_LARGE}
)


@dataclass(frozen=True)
class Polled:
    chain: ChainState
    queue: tuple[Queued, ...]
    """Eligible, undecided current submissions with the launches already spent on them."""
    verdicts: tuple[Verdict, ...]
    """Verdicts this poll reached (pre-screen, copies, replays)."""


@dataclass(frozen=True)
class _Listed:
    submission: Submission
    image: str
    answer: Listing | Unlisted


class Poller:
    def __init__(
        self,
        chain: ChainClient,
        state: ValidatorState,
        settings: Settings,
        evaluation_version: str,
        fetch: ManifestFetcher = fetch_manifest,
    ) -> None:
        self._chain = chain
        self._state = state
        self._settings = settings
        self._version = evaluation_version
        self._fetch = fetch
        self._base_layers: frozenset[str] | None = None

    async def poll(
        self, opponent: Digest | None, holders: frozenset[tuple[Hotkey, Digest]]
    ) -> Polled:
        """One poll; `opponent` is the digest challengers are measured against (the leader's,
        None for the baseline), `holders` the (hotkey, digest) pairs that hold a place now."""
        chain = await self._chain.read_state()
        allowlist = self._settings.arena.registry_allowlist
        verdicts: list[Verdict] = []
        parsed: list[tuple[Uid, ChainSubmission]] = []
        for commitment in chain.commitments:
            if commitment.uid is None:
                continue  # deregistered hotkeys no longer compete
            result = parse_submission(
                commitment.text,
                hotkey=commitment.hotkey,
                uid=commitment.uid,
                block=commitment.block,
                allowlist=allowlist,
            )
            if isinstance(result, Rejection):
                verdicts += self._once(
                    _rejected(commitment.hotkey, commitment.text, result, self._version)
                )
            else:
                parsed.append((commitment.uid, result))

        self._state.record_first_seen([sub for _, sub in parsed])
        listed = [found for uid, sub in parsed if (found := await self._listed(uid, sub))]
        self._state.record_submissions(
            SubmissionRecord(
                entry.submission, entry.image, entry.answer.compressed_size, current=True
            )
            for entry in listed
            if isinstance(entry.answer, Listing)
        )

        protected = self._state.passed()
        unfailed = self._state.not_failed()
        base = await self._base()
        queue: list[Queued] = []
        for entry in listed:
            place = self._entry(
                entry,
                protected=protected,
                unfailed=unfailed,
                base=base,
                opponent=opponent,
                holders=holders,
            )
            if isinstance(place, Verdict):
                verdicts += self._once(place)
            elif place is not None:
                queue.append(place)
        if verdicts:
            self._state.add_verdicts(verdicts)
        for v in verdicts:
            log.info(
                "verdict", hotkey=v.hotkey, digest=v.digest, outcome=v.outcome, reason=v.reason
            )
        return Polled(chain, tuple(queue), tuple(verdicts))

    def _entry(
        self,
        entry: _Listed,
        *,
        protected: list[Submission],
        unfailed: list[Submission],
        base: frozenset[str] | None,
        opponent: Digest | None,
        holders: frozenset[tuple[Hotkey, Digest]],
    ) -> Queued | Verdict | None:
        """The submission's place in the queue, the verdict that ends it, or None if decided
        (or waiting for the registry)."""
        if self._decided(entry.submission):
            return None
        arena = self._settings.arena
        screened = screen(
            entry.submission,
            entry.answer,
            max_bytes=int(arena.max_image_gb * 1e9),
            protected=protected,
            base_layers=base,
            tiny_bytes=int(arena.copy_tiny_mb * 1e6),
            holders=unfailed,
        )
        sub = screened.submission
        if screened.outcome is Outcome.FAIL:
            return self._verdict(sub, Outcome.FAIL, screened.reason, screened.detail)
        if screened.outcome is Outcome.NO_DECISION:
            log.warning(
                "pre-screen waits for the registry; retrying next poll",
                image=entry.image,
                reason=screened.detail,
            )
            return None
        again = replay(sub.digest, self._version, self._state.judged())
        if again is not None:
            return self._verdict(
                sub, again.outcome, again.reason, "replayed: same evaluation version"
            )
        if (sub.hotkey, sub.digest) in holders:
            return None
        evidence = self._state.evidence(sub.digest, EvidenceKind.TEST)
        against = opponent if opponent is not None else _baseline_digest(self._settings)
        spent = evidence.launches if evidence is not None and evidence.against == against else 0
        latest = self._state.latest_verdict(sub.hotkey, sub.digest)
        pending = (
            latest is not None
            and latest.reason is ReasonCode.PENDING
            and latest.evaluation_version == self._version
        )
        return Queued(sub, spent, pending or spent > 0)

    def _decided(self, sub: Submission) -> bool:
        latest = self._state.latest_verdict(sub.hotkey, sub.digest)
        if latest is None or latest.evaluation_version != self._version:
            return False
        return latest.outcome is Outcome.FAIL or latest.reason in (
            ReasonCode.CROWNED,
            ReasonCode.NOT_FASTER,
        )

    def _once(self, verdict: Verdict) -> list[Verdict]:
        """A verdict already on record for the same pair and reason is not repeated."""
        latest = self._state.latest_verdict(verdict.hotkey, verdict.digest)
        same = (
            latest is not None
            and latest.outcome == verdict.outcome
            and latest.reason == verdict.reason
            and latest.evaluation_version == verdict.evaluation_version
        )
        return [] if same else [verdict]

    async def _listed(self, uid: Uid, sub: ChainSubmission) -> _Listed | None:
        """The submission with the registry's answer for it, or None when nothing changes."""
        digest = sub.image.digest
        recorded = self._state.first_seen_holders(digest)
        own = next((h.block for h in recorded if h.hotkey == sub.hotkey), None)
        submission = Submission(sub.hotkey, uid, digest, first_seen(sub.block, own))
        image = sub.image.canonical
        known = self._state.submission(sub.hotkey, digest)
        if known is not None and known.submission.layers is not None:
            size = known.size if known.size is not None else 0
            layers = tuple(sorted(known.submission.layers))
            sizes = dict(known.submission.layer_sizes)
            listing = Listing(size, layers)
            if set(sizes) == set(layers):
                listing = Listing(size, layers, tuple(sizes[layer] for layer in layers))
            return _Listed(with_listing(submission, listing), known.image, listing)
        latest = self._state.latest_verdict(sub.hotkey, digest)
        if latest is not None and latest.reason in _CONTESTANT_REGISTRY_FAULTS:
            return None  # pre-screen already failed it; nothing changes for a digest
        answer = await list_image(sub.image, self._fetch)
        if isinstance(answer, Listing):
            submission = with_listing(submission, answer)
        return _Listed(submission, image, answer)

    @property
    def base_layers(self) -> frozenset[str]:
        """The shared layers as far as the registry has listed them (empty before)."""
        return self._base_layers or frozenset()

    async def _base(self) -> frozenset[str] | None:
        """The layers everyone may share (the baseline's and the configured base images');
        None until the registry has listed every one of them."""
        if self._base_layers is None:
            images = [self._settings.model.baseline_image, *self._settings.arena.base_images]
            layers: set[str] = set()
            for name in images:
                image = parse_reference(name)
                if isinstance(image, Rejection):
                    raise ValueError(f"base image {name}: {image.detail}")
                answer = await list_image(image, self._fetch)
                if isinstance(answer, Unlisted):
                    log.warning(
                        "base image manifest unavailable; copy checks wait",
                        image=name,
                        reason=answer.detail,
                    )
                    return None
                layers.update(answer.layers)
            self._base_layers = frozenset(layers)
        return self._base_layers

    def _verdict(
        self, sub: Submission, outcome: Outcome, reason: ReasonCode | None, detail: str
    ) -> Verdict:
        return Verdict(sub.hotkey, sub.digest, outcome, reason, detail, None, self._version)


def _rejected(hotkey: Hotkey, text: str | None, rejection: Rejection, version: str) -> Verdict:
    # A malformed commitment has no digest; name it by a hash of what the chain holds.
    tag = hashlib.sha256((text or "").encode()).hexdigest()[:16]
    return Verdict(
        hotkey,
        Digest(f"unparsed:{tag}"),
        Outcome.FAIL,
        rejection.reason,
        rejection.detail,
        None,
        version,
    )


def _baseline_digest(settings: Settings) -> Digest:
    return Digest(settings.model.baseline_image.rpartition("@")[2])
