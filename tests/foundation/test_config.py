"""Config: sources and their precedence, one line per problem, exit code 2, secrets never shown."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from cacheon.cli import validator as validator_cli
from cacheon.config import ConfigError, Settings, load_settings
from cacheon.log import REDACTED, configure_logging, get_logger

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    instance = model()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(_leaves(annotation, f"{name}."))
        else:
            out[prefix + name] = getattr(instance, name)
    return out


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    commented: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#\s*(\w+)\s*=", line):
            commented.add(f"{section}.{m.group(1)}")
    for key, default in _leaves(Settings).items():
        table, name = key.split(".")
        if default is None:
            assert key in commented, f"{key} (no default) must appear commented out in the example"
        else:
            assert name in data.get(table, {}), f"{key} is not documented in config.example.toml"
            assert data[table][name] == default, f"{key}: example says {data[table][name]!r}"
    loaded = load_settings(_args(config=EXAMPLE), environ={})
    assert loaded.settings == Settings()


def _args(**values: object):  # type: ignore[no-untyped-def]
    parser = validator_cli.build_parser()
    argv = ["config", "show"]
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return parser.parse_args(argv)


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[chain]\nnetuid = 3\nnetwork = "test"\n[wallet]\nname = "file"\n')
    args = validator_cli.build_parser().parse_args(
        ["config", "show", "--config", str(config), "--wallet.name", "flag"]
    )
    loaded = load_settings(
        args, environ={"CACHEON_CHAIN__NETUID": "7", "CACHEON_WALLET__NAME": "env"}
    )
    s = loaded.settings
    assert (s.chain.netuid, s.chain.network, s.wallet.name, s.wallet.hotkey) == (
        7,
        "test",
        "flag",
        "default",
    )
    assert loaded.sources["chain.netuid"] == "env CACHEON_CHAIN__NETUID"
    assert loaded.sources["chain.network"] == f"file {config}"
    assert loaded.sources["wallet.name"] == "flag --wallet.name"
    assert loaded.sources["wallet.hotkey"] == "default"


def test_bad_file_gives_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[chain]\nnetuid = "fourteen"\n[log]\nlevel = "loud"\n[pods]\nproviders = ["aws"]\nbogus = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(_args(config=config), environ={})
    problems = err.value.problems
    assert len(problems) == 4
    joined = "\n".join(problems)
    assert "chain.netuid: Input should be a valid integer" in joined
    assert "log.level: Input should be 'debug', 'info', 'warning' or 'error'" in joined
    assert "pods.providers.0: Input should be 'targon', 'lium' or 'static'" in joined
    assert "pods.bogus: unknown key" in joined
    assert "allowed here: providers," in joined
    assert all(f"(from file {config})" in p for p in problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[chain\nnetuid=1", "not valid TOML"),
        (None, "no such config file"),
        ("chain = 3\n", "chain: must be a table"),
    ],
)
def test_unreadable_config_exits_2_with_one_line(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    config = tmp_path / "c.toml"
    if content is not None:
        config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "cacheon.cli.validator", "config", "show", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config error: ")
    assert expected in lines[0]
    assert result.stdout == ""


def test_run_with_bad_config_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[validator]\nstate_dir = "{tmp_path / "state"}"\npoll_interval_s = -1\n')
    result = subprocess.run(
        [sys.executable, "-m", "cacheon.cli.validator", "run", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "validator.poll_interval_s: Input should be greater than 0" in result.stderr
    assert not (tmp_path / "state").exists()


SECRETS = {
    "CACHEON_S3__SECRET_ACCESS_KEY": "s3-secret-value-123",
    "CACHEON_PODS__TARGON_API_KEY": "targon-key-456",
    "CACHEON_PODS__LIUM_API_KEY": "lium-key-789",
    "CACHEON_VALIDATOR__SECRET": "validator-secret-0ab",
}


def test_config_show_redacts_secrets_and_names_sources() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cacheon.cli.validator", "config", "show", "--netuid", "9"],
        capture_output=True, text=True, check=True, env={**_base_env(), **SECRETS},
    )  # fmt: skip
    for value in SECRETS.values():
        assert value not in result.stdout + result.stderr
    assert f'secret_access_key = "{REDACTED}"  # env CACHEON_S3__SECRET_ACCESS_KEY' in result.stdout
    assert "netuid = 9  # flag --netuid" in result.stdout


def test_invalid_secret_is_reported_without_its_value(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[s3]\nsecret_access_key = ["lium-key-789"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(_args(config=config), environ={})
    assert err.value.problems[0].startswith("s3.secret_access_key: Input should be a valid string")
    assert "lium-key-789" not in str(err.value)


def test_secrets_never_reach_logs() -> None:
    settings = load_settings(None, environ=SECRETS).settings
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = get_logger("test")
    log.info("settings", s3=settings.s3.model_dump(), api_key=settings.pods.lium_api_key)
    log.info("nested", provider={"name": "targon", "api_key": "targon-key-456"}, token="t0k")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["settings", "nested"]
    assert lines[1]["provider"] == {"name": "targon", "api_key": REDACTED}
    for value in [*SECRETS.values(), "t0k"]:
        assert value not in stream.getvalue()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CACHEON_")}
