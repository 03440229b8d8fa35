"""Step 1 of the loop: read the chain at one block and turn commitments into a queue.

Every commitment is parsed (a malformed one is FAILed with its reason), its digest's first-seen
block is folded into our ledger, and each new digest is pre-screened through the registry before
any GPU money is spent: the manifest must exist, list linux/amd64 and fit the size limit. Then
copies (same digest, or another holder's layers inside ours) are FAILed, terminal verdicts under
the same evaluation version are replayed, and what is left, undecided, is the queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cacheon.arena import Queued, Submission, find_copy, first_seen, replay
from cacheon.chain import firstseen
from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.commitments import ImageRef, Rejection, parse_reference, parse_submission
from cacheon.chain.commitments import Submission as ChainSubmission
from cacheon.chain.registry import ImageManifest, RegistryProblem, fetch_manifest
from cacheon.config import Settings
from cacheon.log import get_logger
from cacheon.protocol import Digest, Hotkey, Outcome, ReasonCode, Uid
from cacheon.validator.state import EvidenceKind, SubmissionRecord, ValidatorState, Verdict

log = get_logger("cacheon.validator.poll")

ManifestFetcher = Callable[[ImageRef], Awaitable[ImageManifest]]

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

        firstseen.record(self._state.db, [sub for _, sub in parsed])
        records: list[SubmissionRecord] = []
        for uid, sub in parsed:
            record = await self._screen(uid, sub)
            if isinstance(record, Verdict):
                verdicts += self._once(record)
            elif record is not None:
                records.append(record)
        self._state.record_submissions(records)

        history = [r.submission for r in self._state.submissions()]
        base = await self._base()
        queue: list[Queued] = []
        for record in records:
            entry = self._entry(record.submission, history, base, opponent, holders)
            if isinstance(entry, Verdict):
                verdicts += self._once(entry)
            elif entry is not None:
                queue.append(entry)
        if verdicts:
            self._state.add_verdicts(verdicts)
        for v in verdicts:
            log.info(
                "verdict", hotkey=v.hotkey, digest=v.digest, outcome=v.outcome, reason=v.reason
            )
        return Polled(chain, tuple(queue), tuple(verdicts))

    def _entry(
        self,
        sub: Submission,
        history: list[Submission],
        base: frozenset[str] | None,
        opponent: Digest | None,
        holders: frozenset[tuple[Hotkey, Digest]],
    ) -> Queued | Verdict | None:
        """The submission's place in the queue, the verdict that ends it, or None if decided."""
        if self._decided(sub):
            return None
        copy = find_copy(sub, history, base) if base is not None else None
        if copy is not None:
            detail = f"copy of {copy.of}" if copy.of else "no layers beyond the baseline's"
            return self._verdict(sub, Outcome.FAIL, copy.reason, detail)
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
        return Queued(sub, spent)

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

    async def _screen(self, uid: Uid, sub: ChainSubmission) -> SubmissionRecord | Verdict | None:
        """The submission with its manifest facts, a FAIL verdict, or None to retry next poll."""
        digest = sub.image.digest
        recorded = firstseen.holders(self._state.db, digest)
        own = next((h.block for h in recorded if h.hotkey == sub.hotkey), None)
        block = first_seen(sub.block, own)
        known = self._state.submission(sub.hotkey, digest)
        if known is not None and known.submission.layers is not None:
            return SubmissionRecord(
                Submission(sub.hotkey, uid, digest, block, known.submission.layers),
                known.image,
                known.size,
                current=True,
            )
        stub = Submission(sub.hotkey, uid, digest, block)
        latest = self._state.latest_verdict(sub.hotkey, digest)
        if latest is not None and latest.reason in _CONTESTANT_REGISTRY_FAULTS:
            return None  # pre-screen already failed it; nothing changes for a digest
        try:
            manifest = await self._fetch(sub.image)
        except RegistryProblem as problem:
            if problem.reason in _CONTESTANT_REGISTRY_FAULTS:
                return self._verdict(stub, Outcome.FAIL, problem.reason, str(problem))
            log.warning(
                "registry unavailable; retrying next poll",
                image=sub.image.canonical,
                reason=str(problem),
            )
            return None
        limit = int(self._settings.arena.max_image_gb * 1e9)
        if manifest.compressed_size > limit:
            detail = f"{manifest.compressed_size / 1e9:.1f} GB compressed > {self._settings.arena.max_image_gb:g} GB"
            return self._verdict(stub, Outcome.FAIL, ReasonCode.IMAGE_TOO_LARGE, detail)
        layered = Submission(sub.hotkey, uid, digest, block, frozenset(manifest.diff_ids))
        return SubmissionRecord(
            layered, sub.image.canonical, manifest.compressed_size, current=True
        )

    async def _base(self) -> frozenset[str] | None:
        """The baseline image's layers, which everyone may share; None until the registry answers."""
        if self._base_layers is None:
            image = parse_reference(self._settings.model.baseline_image)
            if isinstance(image, Rejection):
                raise ValueError(f"model.baseline_image: {image.detail}")
            try:
                manifest = await self._fetch(image)
            except RegistryProblem as problem:
                log.warning("baseline manifest unavailable; copy checks wait", reason=str(problem))
                return None
            self._base_layers = frozenset(manifest.diff_ids)
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
