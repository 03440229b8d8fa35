"""The GPU bench server's tensor-parallel shards compute what one device computes (issue 22).

`bench/gpu_tp_check.py` runs the sharded runner over gloo (two or four CPU processes, float32)
beside the one-device runner on the same seeded weights, and against the `transformers`
reference. It needs torch and transformers, which the agent's venv must not carry: the vLLM
venv that `make test` builds has both, so these run in the vLLM phase, never skipped.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cacheon.testing.vllm_server import REPO, VLLM_PYTHON

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize(
    "tp",
    [
        2,  # one KV head per rank
        4,  # more ranks than KV heads: each rank holds a replica of the one it reads
    ],
)
def test_sharded_runner_matches_one_device(tp: int) -> None:
    done = subprocess.run(
        [str(VLLM_PYTHON), "bench/gpu_tp_check.py", "--tp", str(tp), "--preset", "tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["backend"] == "gloo"
    assert result["same_tokens"], result
    assert result["max_logprob_diff"] <= 1e-4, result
    assert result["self_check_tp"]["top1_agreement"] == 1.0, result
    assert result["self_check_tp"]["max_logprob_diff"] <= 1e-4, result
    assert result["worker_exit_codes"] == [0] * (tp - 1)
    assert done.returncode == 0, done.stderr[-3000:]
