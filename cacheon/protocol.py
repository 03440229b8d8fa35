"""The one contract between validator, agent and miners.

Everything that crosses a process or machine boundary is a versioned pydantic model defined here:
the job the validator hands the agent (`JobSpec`), the agent's progress lines (`ProgressEvent`),
its raw measurements (`RoundReport`) and what the validator publishes (`PublicReport`). Outcomes
and reason codes are `StrEnum`s so that a verdict is data, not prose. This module is pure: no I/O.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, NewType

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 0
"""Version of the models below; bumped on any incompatible change."""

CONTRACT_VERSION = 1
"""Version of the miner server contract (DESIGN.md §4.2)."""

Hotkey = NewType("Hotkey", str)
Uid = NewType("Uid", int)
Block = NewType("Block", int)
Digest = NewType("Digest", str)
"""`sha256:` followed by 64 lowercase hex digits."""

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Outcome(StrEnum):
    """Three-valued verdict of one evaluation (DESIGN.md §3)."""

    PASS = "PASS"  # noqa: S105 (an outcome, not a password)
    FAIL = "FAIL"  # the contestant's fault; it scores 0
    NO_DECISION = "NO_DECISION"  # nobody's fault that we can pin on the contestant; retried


class Attribution(StrEnum):
    """Who a failure is charged to; only CONTESTANT ever costs a miner anything."""

    CONTESTANT = "contestant"
    VALIDATOR = "validator"
    PROVIDER = "provider"
    REGISTRY = "registry"


class ReasonCode(StrEnum):
    """Why an evaluation ended as it did. Stable strings: they are published and replayed."""

    # pre-screen at poll time, before any GPU money is spent
    BAD_COMMITMENT = "bad_commitment"
    MANIFEST_NOT_FOUND = "manifest_not_found"
    NO_AMD64_PLATFORM = "no_amd64_platform"
    IMAGE_TOO_LARGE = "image_too_large"
    COPY_OF = "copy_of"
    COPY_OF_REFERENCE = "copy_of_reference"
    # launching the contestant on the pod
    PULL_FAILED = "pull_failed"
    DIGEST_MISMATCH = "digest_mismatch"
    START_FAILED = "start_failed"
    STARTUP_TIMEOUT = "startup_timeout"
    CRASHED = "crashed"
    OOM = "oom"
    BAD_RESPONSE = "bad_response"
    # the correctness gate (DESIGN.md §4.4)
    PLAUSIBILITY = "plausibility"
    GREEDY_CONSISTENCY = "greedy_consistency"
    VALUE_CLOSENESS = "value_closeness"
    DISTRIBUTION = "distribution"
    GARBAGE = "garbage"
    EOS_HONESTY = "eos_honesty"
    LENGTH_BAND = "length_band"
    FABRICATION = "fabrication"
    CONFORMANCE = "conformance"
    BEHAVIOURAL_COPY = "behavioural_copy"
    UNEVALUABLE = "unevaluable"
    # not the contestant's fault
    POD_LOST = "pod_lost"
    S3_UNAVAILABLE = "s3_unavailable"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    LEFTOVER_GPU_MEMORY = "leftover_gpu_memory"
    GPU_XID = "gpu_xid"
    BASELINE_UNSTABLE = "baseline_unstable"
    DRIFT = "drift"
    CLIENT_SATURATED = "client_saturated"
    AGENT_FAILED = "agent_failed"
    ROUND_ABANDONED = "round_abandoned"
    BUDGET = "budget"
    # speed decisions
    CROWNED = "crowned"
    NOT_FASTER = "not_faster"
    PENDING = "pending"


class Role(StrEnum):
    BASELINE = "baseline"
    LEADER = "leader"
    CHALLENGER = "challenger"


class Phase(StrEnum):
    """Phases the agent reports progress in, in the order they happen."""

    PREPARE = "prepare"
    PULL = "pull"
    START = "start"
    WARMUP = "warmup"
    MEASURE = "measure"
    SCORE = "score"
    UPLOAD = "upload"
    DONE = "done"
    FAILED = "failed"


class JobKind(StrEnum):
    """What an agent job does. `round` is the benchmark; `probe` measures nothing and reports the
    pod's hardware, which proves the whole handoff path (bootstrap, detach, upload, verify)."""

    ROUND = "round"
    PROBE = "probe"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


DigestStr = Annotated[str, Field(pattern=DIGEST_PATTERN)]


class Contestant(_Model):
    """One image to launch in a round. `key` names it in the launch order and the report."""

    key: str
    role: Role
    hotkey: str | None = None
    image: str  # canonical `<registry>/<repository>@sha256:<hex>`


class PromptDataset(_Model):
    """An operator's prompt file on the pod (JSON lines of `{"messages": [...]}`), pinned by hash;
    `share` of the prompts come from it, the rest from the built-in generator."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    share: float = Field(default=0.5, ge=0, le=1)


class Workload(_Model):
    concurrencies: tuple[int, ...] = (1, 16, 64)
    prompts_per_block: int = Field(default=64, ge=1)
    blocks_per_level: int = Field(default=2, ge=1)
    level_prompts: tuple[int, ...] = ()
    """Prompts per block at each concurrency, in the order of `concurrencies`; empty: every level
    takes `prompts_per_block`. A level's time grows with prompts / concurrency, so concurrency 1
    is where prompts cost most and tell least (a launch's noise is mostly its offset)."""
    level_blocks: tuple[int, ...] = ()
    """Blocks at each concurrency, likewise; empty: `blocks_per_level` everywhere."""
    warmup_requests: int = Field(default=8, ge=0)
    max_tokens: int = Field(default=256, ge=1)
    generator_version: int = 1
    request_timeout_s: float = Field(default=300.0, gt=0)
    """A request not finished this long after its bytes were sent fails the launch."""
    dataset: PromptDataset | None = None

    @model_validator(mode="after")
    def _one_per_level(self) -> Workload:
        for name in ("level_prompts", "level_blocks"):
            values = getattr(self, name)
            if values and (len(values) != len(self.concurrencies) or min(values) < 1):
                raise ValueError(f"{name} needs one positive count per concurrency level")
        return self

    def prompts_at(self, concurrency: int) -> int:
        """Prompts per block at `concurrency`."""
        if self.level_prompts:
            return self.level_prompts[self.concurrencies.index(concurrency)]
        return self.prompts_per_block

    def blocks_at(self, concurrency: int) -> int:
        """Blocks measured at `concurrency`."""
        if self.level_blocks:
            return self.level_blocks[self.concurrencies.index(concurrency)]
        return self.blocks_per_level


class GateThresholds(_Model):
    """Correctness gate thresholds (DESIGN.md §4.4); provisional until calibrated."""

    eps_tie: float = 0.5
    divergence_rate: float = 0.02
    """Near-tie divergences per scored token (a choice repeated in a loop counted once) that an
    honest engine stays under: a response or a run with a count improbable at this rate..."""
    divergence_alpha: float = 1e-6
    """...by a one-sided binomial test at this significance fails greedy consistency. A rate,
    not a count per response, so a server's verdict does not change with max_tokens."""
    delta: float = 0.3
    kl_mean: float = 0.05
    kl_p99: float = 0.5
    min_logprob: float = -12.0
    length_band: tuple[float, float] = (0.9, 1.1)
    fabrication_entropy: float = 1.0
    """Reference entropy (nats) above which a reported near-certainty is suspect."""
    fabrication_share: float = 0.5
    """Share of such positions reported as near-certain that fails the run..."""
    fabrication_min_positions: int = 8
    """...once there are at least this many of them."""
    copy_share: float = 0.5
    """Share of responses identical to the leader's that flags a behavioural copy (§4.6)..."""
    copy_logprob_tolerance: float = 2e-3
    """...identical: the same token ids, and every reported logprob within this many nats of
    the leader's, so a nudge of the last digits does not hide a copy."""
    score_prompt_cap: int = 4096
    """Responses to longer prompts are scored on a seeded sample: prompt_logprobs costs ~1.5 kB
    of JSON per prompt position, and vLLM builds it in Python."""
    long_prompt_sample: int = 8
    text_sample: int = 16
    """Responses per contestant whose streamed text is checked against their token ids."""
    version: int = 1
    provisional: bool = True


REPORT_OBJECT = "report.json"
"""Name of the signed report's object under the round's prefix."""


def trace_object(index: int) -> str:
    """Name of the `index`-th trace object under the round's prefix (`trace-000.jsonl.gz`, ...)."""
    return f"trace-{index:03d}.jsonl.gz"


class UploadSlot(_Model):
    """A presigned PUT URL for one numbered object under this round's prefix."""

    name: str
    url: str
    expires_at: float  # unix seconds


class JobSpec(_Model):
    """Everything the agent needs for one job. It travels as a file on the pod, so it carries no
    secret: the HMAC key arrives on the agent's stdin and uploads use presigned URLs only."""

    schema_version: int = SCHEMA_VERSION
    kind: JobKind = JobKind.ROUND
    round_id: str
    seed: str  # hex
    served_model_name: str
    model_path: str
    max_model_len: int
    contestants: tuple[Contestant, ...]
    launch_order: tuple[str, ...]  # contestant keys, e.g. B, L, C1..Cn, L', B'
    workload: Workload = Workload()
    gate: GateThresholds = GateThresholds()
    uploads: tuple[UploadSlot, ...] = ()
    startup_deadline_s: float = 1200.0
    round_deadline_s: float = 4 * 3600.0
    probe_seconds: float = Field(default=0.0, ge=0)
    """A probe job samples the GPUs (clocks, throttling) this long before it reports."""
    base_layers: tuple[str, ...] = ()
    """Diff ids of the base layers (the baseline's, reference and public images', §4.6): files
    the agent fingerprints from them are not an image's own. Empty: no image is fingerprinted,
    since the shared base would pass for every image's own work."""


class ProgressEvent(_Model):
    """One JSON line of agent progress."""

    schema_version: int = SCHEMA_VERSION
    ts: float
    phase: Phase
    contestant: str | None = None
    launch: int | None = None
    done: int | None = None
    total: int | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    elapsed_s: float | None = None
    message: str = ""
    error: str | None = None


class JobStatus(_Model):
    """Written by the agent when a job ends (`status.json`), so a validator that reattaches
    later still learns how it ended. Absent while running or after a hard kill."""

    schema_version: int = SCHEMA_VERSION
    round_id: str
    exit_code: int
    report_uploaded: bool
    error: str | None = None
    finished_at: float


class ModelFile(_Model):
    """One weight file to fetch onto the pod and the hash it must have."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    url: str

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{path!r} is not a plain relative path")
        return path


class FetchPlan(_Model):
    """What `cacheon-agent fetch_model` downloads into `dest`, every file verified."""

    schema_version: int = SCHEMA_VERSION
    model: str  # name@revision, for messages
    dest: str
    files: tuple[ModelFile, ...]


class FileFingerprint(_Model):
    """A sample of an image's files, for the file-level copy check (DESIGN.md §4.6).

    A squash or a re-layering changes an image's layers, not its files, so the agent fingerprints
    the files it pulled: every regular file is named by the first 16 hex digits of
    sha256(path, size, sha256 of its content). Every file of `SAMPLE_ALL_BYTES` or more is kept
    (large files carry the bytes) and the smaller ones whose name falls in a fixed 1/`SAMPLE_RATE`
    of the hash space, so two images' samples cover the same files and can be compared.
    """

    files: int
    """Regular, non-empty files in the image."""
    bytes: int
    samples: tuple[tuple[str, int, bool], ...] = ()
    """(name, size, own): own is True for a file from a layer outside the base layers."""


FILE_SAMPLE_ALL_BYTES = 256 << 10
FILE_SAMPLE_RATE = 64


def file_sample_weight(size: int) -> int:
    """How many files one sampled file of `size` stands for."""
    return 1 if size >= FILE_SAMPLE_ALL_BYTES else FILE_SAMPLE_RATE


class ImageFacts(_Model):
    """What the engine says about an image; used for copy detection outside the container."""

    digest: DigestStr
    config_digest: DigestStr | None = None
    layer_diff_ids: tuple[str, ...] = ()
    compressed_size: int | None = None
    files: FileFingerprint | None = None
    """The image's file sample, when the agent could read the image (not for attached servers)."""


class HardwareFacts(_Model):
    gpu_names: tuple[str, ...] = ()
    gpu_clocks_mhz: tuple[int, ...] = ()
    gpu_max_clocks_mhz: tuple[int, ...] = ()
    gpu_memory_mib: tuple[int, ...] = ()
    driver_version: str | None = None
    throttled: bool = False
    throttle_reasons: tuple[str, ...] = ()
    enforced_limits: dict[str, str] = Field(default_factory=dict)


class PodFacts(_Model):
    """The agent's answer to `cacheon-agent check`: what the pod is, for the validator to judge."""

    hardware: HardwareFacts
    gpu_problem: str | None = None
    """Why no GPU could be read (`no GPU: nvidia-smi not found`, ...); None when GPUs answered."""
    docker_version: str | None = None
    docker_problem: str | None = None
    runtimes: tuple[str, ...] = ()


class LevelMeasurement(_Model):
    """One block at one concurrency level of one launch."""

    concurrency: int
    block: int
    speed: float  # geometric mean of 1/T_k over the block's requests, in 1/s
    requests: int
    client_saturated: bool = False
    remeasured: int = 0
    """Times the block was measured again because a load worker saturated while every stream
    kept the contract's limits (the client's fault, not the server's); `client_saturated` is
    the last attempt's."""
    # reported beside the speed (medians over the block's requests), never scored
    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    throughput_tok_s: float | None = None
    client_cpu_share: float | None = None
    """The busiest load worker's CPU time over the block's wall time."""
    client_lag_p99_s: float | None = None
    """The worst load worker's p99 event-loop lag: how late its timestamps could be."""


class Launch(_Model):
    """One start-measure-stop of one contestant; launches are the unit of evidence (§4.5)."""

    index: int
    contestant: str
    started_ns: int
    """Before its pull and start-up."""
    ended_ns: int
    measured_from_ns: int | None = None
    """When its first measured block started: with `measured_to_ns`, the window its speed was
    measured in, whose midpoint places it in time for the bookend interpolation (§4.5)."""
    measured_to_ns: int | None = None
    """When its last measured block ended."""
    levels: tuple[LevelMeasurement, ...] = ()
    outcome: Outcome | None = None
    reason: ReasonCode | None = None
    detail: str = ""


class ContestantResult(_Model):
    key: str
    image: ImageFacts | None = None
    outcome: Outcome
    reason: ReasonCode | None = None
    detail: str = ""
    copy_of: str | None = None
    """Key of the leader whose measured outputs this contestant reproduced (§4.6: the same token
    ids, logprobs within `GateThresholds.copy_logprob_tolerance`): a behavioural copy, reported,
    and neither leader nor runner-up."""


class TraceRef(_Model):
    """One uploaded trace object; its hash makes the trace as authentic as the signed report."""

    name: str
    sha256: str
    size: int
    records: int


class RoundReport(_Model):
    """Raw measurements from the agent; all verdict maths happens on the validator."""

    schema_version: int = SCHEMA_VERSION
    round_id: str
    kind: JobKind = JobKind.ROUND
    agent_version: str = ""
    launches: tuple[Launch, ...] = ()
    results: tuple[ContestantResult, ...] = ()
    hardware: HardwareFacts = HardwareFacts()
    traces: tuple[TraceRef, ...] = ()


class TraceRecord(_Model):
    """One measured request (DESIGN.md §4.3). Times are nanoseconds from the moment its bytes
    were sent; `token_ns[i]` is when the i-th token id arrived (several per event share a time).
    Traces are gzip-compressed JSON lines, one record each (`encode_trace`)."""

    launch: int
    contestant: str
    concurrency: int
    block: int
    prompt: int
    sent_ns: int
    token_ns: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    error: str | None = None


def encode_trace(records: Iterable[TraceRecord]) -> bytes:
    """Compressed JSON lines; byte-identical for identical records (gzip mtime is fixed)."""
    text = b"".join(canonical_bytes(record) + b"\n" for record in records)
    return gzip.compress(text, mtime=0)


def decode_trace(data: bytes) -> list[TraceRecord]:
    """Inverse of `encode_trace`; raises ValueError (or OSError from gzip) on damaged data."""
    lines = gzip.decompress(data).splitlines()
    return [TraceRecord.model_validate_json(line) for line in lines if line]


def canonical_bytes(model: BaseModel) -> bytes:
    """The one byte form that is signed: JSON with sorted keys and no whitespace, so a report
    parsed and re-serialised on the other side yields the same bytes."""
    return json.dumps(
        model.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


_REPORT_MAC_DOMAIN = b"cacheon/round-report\x00"


def report_mac(key: bytes, report: RoundReport) -> str:
    """HMAC-SHA256 (hex) of a report's canonical bytes, domain-separated from any other MAC."""
    return hmac.new(key, _REPORT_MAC_DOMAIN + canonical_bytes(report), hashlib.sha256).hexdigest()


class SignedReport(_Model):
    """The `report.json` object: the report and its MAC under the round's HMAC key."""

    schema_version: int = SCHEMA_VERSION
    mac: str = Field(pattern=r"^[0-9a-f]{64}$")
    report: RoundReport


def sign_report(key: bytes, report: RoundReport) -> SignedReport:
    return SignedReport(mac=report_mac(key, report), report=report)


def verify_report(key: bytes, signed: SignedReport) -> bool:
    """True when the MAC matches; compared in constant time."""
    return hmac.compare_digest(report_mac(key, signed.report), signed.mac)


class Standing(_Model):
    """A place in the standings with its speed against the baseline (None until measured)."""

    hotkey: str
    uid: int | None = None
    digest: DigestStr
    image: str
    speed_ratio: float | None = None  # exp(mean log-ratio) against the baseline
    ratio_low: float | None = None  # one-sided bounds at the arena's alpha
    ratio_high: float | None = None
    launches: int = 0


class PublishedVerdict(_Model):
    hotkey: str
    digest: str
    image: str | None = None
    outcome: Outcome
    reason: ReasonCode | None = None
    detail: str = ""
    round_id: str | None = None
    at: float


class PublicRound(_Model):
    """One round's raw evidence: anyone can recompute its ratios and check its seed."""

    round_id: str
    block: int
    block_hash: str
    salt_hash: str
    salt: str | None = None  # revealed once the round is over
    seed: str
    state: str
    reason: ReasonCode | None = None
    launch_order: tuple[str, ...] = ()
    contestants: tuple[Contestant, ...] = ()
    launches: tuple[Launch, ...] = ()
    results: tuple[ContestantResult, ...] = ()


class PublicReport(_Model):
    """What a validator publishes after each round; miners read it with `cacheon-miner status`."""

    schema_version: int = SCHEMA_VERSION
    validator_hotkey: str
    validator_version: str
    evaluation_version: str
    netuid: int
    block: int
    published_at: float
    launch_noise: float | None = None
    """The launch-noise bound decisions use (log scale): what `cacheon-miner check --sigma` takes."""
    leader: Standing | None = None
    runner_up: Standing | None = None
    pending: tuple[Standing, ...] = ()
    verdicts: tuple[PublishedVerdict, ...] = ()
    round: PublicRound | None = None
