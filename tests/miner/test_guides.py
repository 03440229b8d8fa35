"""The guides say what the code does: the contract text, its examples, thresholds, reasons, commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson
import pytest

from cacheon.agent.response import Event, parse
from cacheon.agent.workload import Prompt, request_body
from cacheon.cli.miner import build_parser as miner_parser
from cacheon.cli.validator import build_parser as validator_parser
from cacheon.config import ModelSettings
from cacheon.contract import CONTRACT_TEXT, EXAMPLE_CHUNK, EXAMPLE_MODEL, EXAMPLE_REQUEST
from cacheon.protocol import GateThresholds, ReasonCode

ROOT = Path(__file__).parents[2]
MINER_GUIDE = ROOT / "docs" / "miner-guide.md"
VALIDATOR_GUIDE = ROOT / "docs" / "validator-guide.md"
PARSERS = {"cacheon-miner": miner_parser, "cacheon-validator": validator_parser}


def test_the_miner_guide_states_the_contract_as_the_code_does() -> None:
    assert CONTRACT_TEXT in MINER_GUIDE.read_text()


def test_the_example_request_is_what_the_load_generator_sends() -> None:
    message = EXAMPLE_REQUEST["messages"][0]
    prompt = Prompt(((message["role"], message["content"]),), EXAMPLE_REQUEST["max_tokens"], 1234)
    assert orjson.dumps(EXAMPLE_REQUEST) == request_body(prompt, EXAMPLE_MODEL)


def test_the_example_chunk_is_what_the_stream_parser_accepts() -> None:
    last = orjson.loads(orjson.dumps(EXAMPLE_CHUNK))
    last["choices"][0]["finish_reason"] = "length"
    events = [Event(10, orjson.dumps(last)), Event(11, b"[DONE]")]
    parsed = parse(0, events, EXAMPLE_MODEL, max_tokens=1)
    entry = EXAMPLE_CHUNK["choices"][0]["logprobs"]["content"][0]
    assert parsed.token_ids == (int(entry["token"].removeprefix("token_id:")),)
    assert parsed.logprobs == (entry["logprob"],)
    assert len(parsed.top_logprobs[0]) == 5


def test_the_guide_gives_the_current_gate_thresholds() -> None:
    stated = dict(re.findall(r"`(\w+)` = (-?[\d.]+)", MINER_GUIDE.read_text()))
    defaults = GateThresholds()
    assert set(stated) == {
        "eps_tie",
        "divergence_rate",
        "divergence_alpha",
        "copy_logprob_tolerance",
        "delta",
        "kl_mean",
        "kl_p99",
        "min_logprob",
    }
    for name, value in stated.items():
        assert float(value) == getattr(defaults, name), name
    low, high = defaults.length_band
    assert f"| {low} to {high} x |" in MINER_GUIDE.read_text()


def test_every_reason_code_has_advice() -> None:
    advised = set(re.findall(r"^\| `(\w+)` \| [A-Z_]+", MINER_GUIDE.read_text(), re.MULTILINE))
    assert advised == {code.value for code in ReasonCode}


def _commands() -> list[tuple[str, str]]:
    found = []
    for guide in (MINER_GUIDE, VALIDATOR_GUIDE):
        for block in re.findall(r"```bash\n(.*?)```", guide.read_text(), re.DOTALL):
            found += [
                (guide.name, line)
                for line in block.splitlines()
                if line.split(" ", 1)[0] in PARSERS
            ]
    return found


@pytest.mark.parametrize(("guide", "line"), _commands())
def test_every_command_in_the_guides_parses(guide: str, line: str) -> None:
    words = shlex.split(line, comments=True)
    try:
        args = PARSERS[words[0]]().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{guide}: `{line}` does not parse (exit {exc.code})")
    assert args.command is not None


def test_the_example_image_starts_from_the_pinned_baseline() -> None:
    dockerfile = (ROOT / "docs" / "examples" / "vllm-tuned" / "Dockerfile").read_text()
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert default == ModelSettings().baseline_image


def test_the_readme_links_both_guides() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/miner-guide.md" in readme
    assert "docs/validator-guide.md" in readme
