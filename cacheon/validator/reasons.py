"""What each published reason code means, in one line a miner can act on, and who it is charged to.

The leaderboard page, the status CLI and the API all explain verdicts with this one table, so a
reason code reads the same wherever a miner meets it. Whose fault a failure is comes from the
arena's attribution table (`arena.FAILURES`), never restated here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from cacheon.arena import FAILURES, attribute
from cacheon.protocol import Attribution, Outcome, ReasonCode

_R = ReasonCode
MEANINGS: Final = MappingProxyType(
    {
        _R.BAD_COMMITMENT: "the committed string is not `cacheon/1 <registry>/<repo>@sha256:<hex>`",
        _R.MANIFEST_NOT_FOUND: "the registry has no manifest for the committed digest",
        _R.NO_AMD64_PLATFORM: "the image index lists no linux/amd64 manifest",
        _R.IMAGE_TOO_LARGE: "the compressed image is larger than the validator's size limit",
        _R.COPY_OF: "the same image (or its layers) was committed earlier by another hotkey",
        _R.COPY_OF_REFERENCE: "the image adds no layers to the baseline or a reference image",
        _R.PULL_FAILED: "the pod could not pull the image by its digest",
        _R.DIGEST_MISMATCH: "the pulled image does not match the committed digest",
        _R.START_FAILED: "the container did not start",
        _R.STARTUP_TIMEOUT: "GET /health did not answer 200 within the startup deadline",
        _R.CRASHED: "the server exited while it was being measured",
        _R.OOM: "the container ran out of memory",
        _R.BAD_RESPONSE: "a response broke the miner server contract (stream, fields, status)",
        _R.PLAUSIBILITY: "emitted tokens outside the reference model's top 5",
        _R.GREEDY_CONSISTENCY: "too many tokens that greedy decoding would not pick",
        _R.VALUE_CLOSENESS: "reported logprobs differ from the reference model's",
        _R.DISTRIBUTION: "the top-5 distribution diverges from the reference (KL too high)",
        _R.GARBAGE: "emitted tokens the reference model finds near-impossible",
        _R.EOS_HONESTY: "stopped where the model would not, or ran past a clear stop",
        _R.LENGTH_BAND: "total output length outside 0.9-1.1x the baseline's",
        _R.FABRICATION: "reported logprobs look made up (certain where the model is not)",
        _R.CONFORMANCE: "token ids, model name or text do not match what the contract requires",
        _R.BEHAVIOURAL_COPY: "outputs bit-identical to the leader's: reported, never runner-up",
        _R.UNEVALUABLE: "three failed evaluations charged to the image: it is not retried",
        _R.POD_LOST: "the GPU pod was lost during the round",
        _R.S3_UNAVAILABLE: "the validator's object store failed; the round decided nothing",
        _R.REGISTRY_UNAVAILABLE: "the registry failed or rate-limited us; retried next poll",
        _R.LEFTOVER_GPU_MEMORY: "GPU memory was still in use before a launch",
        _R.GPU_XID: "the GPU reported a hardware (Xid) error",
        _R.BASELINE_UNSTABLE: "the baseline could not be measured at both ends of the round",
        _R.DRIFT: "the pod's speed drifted beyond 4 sigma between the round's bookends",
        _R.CLIENT_SATURATED: "the load generator saturated; its timings were discarded",
        _R.AGENT_FAILED: "the benchmark agent failed; the round decided nothing",
        _R.ROUND_ABANDONED: "the validator stopped or restarted mid-round",
        _R.BUDGET: "the validator's daily pod budget was spent",
        _R.CROWNED: "beat the leader (or, with none, the baseline) beyond the moat; the best such leads",
        _R.NOT_FASTER: "not faster than the leader (or, with none, the baseline) beyond the moat",
        _R.PENDING: (
            "not decided yet (too close to call, or crowned while another crown of the round"
            " was faster): more launches in later rounds"
        ),
    }
)
"""Every reason code's one-line meaning (a test checks that none is missing)."""


def meaning(reason: ReasonCode | None, outcome: Outcome) -> str:
    """The reason's meaning, with whose fault it is when it is a failure."""
    if reason is None:
        return "passed every check" if outcome is Outcome.PASS else ""
    return f"{MEANINGS[reason]}{_fault(reason)}"


def _fault(reason: ReasonCode) -> str:
    if reason not in FAILURES:
        return ""
    own = attribute(reason, during_own_launch=True).attribution
    other = attribute(reason, during_own_launch=False).attribution
    if own is Attribution.CONTESTANT and other is Attribution.CONTESTANT:
        return ""
    if own is Attribution.CONTESTANT:
        return f" (the {other.value}'s fault, unless it struck during the image's own launch)"
    return f" (the {other.value}'s fault, never the miner's)"
