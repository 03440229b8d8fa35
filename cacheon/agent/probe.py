"""The probe job: measures nothing, reports the pod's hardware.

It proves the whole path (bootstrap, detached run, signed upload, verification) without a
benchmark, and, given `probe_seconds`, watches the GPUs that long so a pod whose clocks sag or
that throttles is seen before a round is spent on it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from cacheon.agent.hardware import read_gpus
from cacheon.protocol import HardwareFacts, Phase, RoundReport

if TYPE_CHECKING:
    from cacheon.agent.job import JobContext
    from cacheon.protocol import JobSpec

SAMPLE_INTERVAL_S = 1.0


async def run_probe(spec: JobSpec, ctx: JobContext) -> RoundReport:
    """Sample the GPUs for `spec.probe_seconds`; report the lowest clocks and any throttling."""
    first = await asyncio.to_thread(read_gpus)
    ctx.emit(Phase.MEASURE, message=first.problem or f"{len(first.facts.gpu_names)} GPUs")
    facts = first.facts
    samples = 1
    end = time.monotonic() + spec.probe_seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(SAMPLE_INTERVAL_S, left))
        sample = (await asyncio.to_thread(read_gpus)).facts
        facts = _worst(facts, sample)
        samples += 1
        ctx.emit(Phase.MEASURE, done=samples, message="gpu sample")
    return RoundReport(round_id=spec.round_id, hardware=facts)


def _worst(seen: HardwareFacts, sample: HardwareFacts) -> HardwareFacts:
    if seen.gpu_names != sample.gpu_names:
        return seen
    return seen.model_copy(
        update={
            "gpu_clocks_mhz": tuple(map(min, seen.gpu_clocks_mhz, sample.gpu_clocks_mhz)),
            "throttled": seen.throttled or sample.throttled,
            "throttle_reasons": tuple(sorted({*seen.throttle_reasons, *sample.throttle_reasons})),
        }
    )
