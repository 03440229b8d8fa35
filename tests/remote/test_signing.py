"""The signed report and trace formats (pure, no services)."""

from __future__ import annotations

import gzip

import pytest
from pydantic import ValidationError

from cacheon.protocol import (
    HardwareFacts,
    Launch,
    LevelMeasurement,
    ModelFile,
    RoundReport,
    SignedReport,
    TraceRecord,
    canonical_bytes,
    decode_trace,
    encode_trace,
    sign_report,
    verify_report,
)

KEY = bytes(range(32))


def _report() -> RoundReport:
    level = LevelMeasurement(concurrency=16, block=0, speed=1 / 3, requests=64)
    return RoundReport(
        round_id="r1",
        launches=(Launch(index=0, contestant="B", started_ns=1, ended_ns=2, levels=(level,)),),
        hardware=HardwareFacts(gpu_names=("NVIDIA H200",), gpu_clocks_mhz=(1980,)),
    )


def test_a_signed_report_survives_the_wire_and_verifies() -> None:
    signed = sign_report(KEY, _report())
    received = SignedReport.model_validate_json(signed.model_dump_json().encode())
    assert verify_report(KEY, received)
    assert canonical_bytes(received.report) == canonical_bytes(_report())


@pytest.mark.parametrize(
    "change",
    [
        {"round_id": "r2"},
        {"hardware": HardwareFacts(gpu_names=("NVIDIA H100",), gpu_clocks_mhz=(1980,))},
        {"launches": ()},
    ],
)
def test_any_change_breaks_the_mac(change: dict[str, object]) -> None:
    signed = sign_report(KEY, _report())
    forged = signed.model_copy(update={"report": signed.report.model_copy(update=change)})
    assert not verify_report(KEY, forged)
    assert not verify_report(b"\x00" * 32, signed)


def test_canonical_bytes_do_not_depend_on_field_order_or_whitespace() -> None:
    report = _report()
    shuffled = (
        '{ "hardware": {"gpu_clocks_mhz": [1980], "gpu_names": ["NVIDIA H200"]},\n'
        '  "launches": [{"ended_ns": 2, "started_ns": 1, "contestant": "B", "index": 0,'
        ' "levels": [{"speed": 0.3333333333333333, "requests": 64, "block": 0, "concurrency": 16}]}],'
        ' "round_id": "r1"}'
    )
    assert canonical_bytes(RoundReport.model_validate_json(shuffled)) == canonical_bytes(report)


def test_traces_are_compressed_json_lines_and_deterministic() -> None:
    records = [
        TraceRecord(
            launch=1, contestant="C1", concurrency=64, block=2, prompt=i, sent_ns=10 * i,
            token_ns=(100, 150, 150), token_ids=(7, 8, 9), finish_reason="length",
        )
        for i in range(5)
    ]  # fmt: skip
    data = encode_trace(records)
    assert data == encode_trace(records)
    assert len(gzip.decompress(data).splitlines()) == 5
    assert decode_trace(data) == records
    with pytest.raises((OSError, EOFError)):
        decode_trace(data[: len(data) // 2])


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a//b", "a/./b", ""])
def test_a_model_file_path_must_stay_inside_the_model_dir(path: str) -> None:
    with pytest.raises(ValidationError, match="plain relative path"):
        ModelFile(path=path, sha256="0" * 64, size=1, url="http://127.0.0.1/x")
