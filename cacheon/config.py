"""The one settings object of the validator and the miner CLI.

Values come from, in rising precedence: the defaults below, a TOML file (`--config`), `CACHEON_*`
environment variables (nested keys joined by `__`, e.g. `CACHEON_CHAIN__NETUID=14`) and the
standard bittensor flags. Every value remembers where it came from so that `config show` can say
so. A bad value is reported as one line per problem naming the key and what is allowed; secrets
are `SecretStr` and are never rendered.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "CACHEON_"
ENV_NESTED_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainSettings(_Section):
    network: str = "finney"
    """`finney`, `test`, `local`, or a ws:// / wss:// endpoint."""
    chain_endpoint: str | None = None
    """Overrides the network's endpoint when set (the `--subtensor.chain_endpoint` flag)."""
    fallback_endpoints: list[str] = Field(default_factory=list)
    netuid: int = Field(default=14, ge=0, le=65535)
    call_timeout_s: float = Field(default=30.0, gt=0)


class WalletSettings(_Section):
    name: str = "default"
    hotkey: str = "default"
    path: str = "~/.bittensor/wallets"


class ValidatorSettings(_Section):
    state_dir: str = "~/.cacheon"
    poll_interval_s: float = Field(default=60.0, gt=0)
    secret: SecretStr | None = None
    """Keys the per-round salt (DESIGN.md §3 step 3); never published."""
    weights_interval_blocks: int | None = Field(default=None, ge=1)
    """Defaults to the subnet tempo when unset."""
    weights_version_key: int = Field(default=0, ge=0)
    """Sent as max(this, the chain's WeightsVersionKey)."""
    watchdog_s: float = Field(default=600.0, gt=0)
    """No new block for this long: reconnect; for as long again: exit non-zero (systemd restarts)."""
    sweep_interval_s: float = Field(default=300.0, gt=0)
    """How often the orphan-pod sweep and the idle-pod release run."""
    stop_grace_s: float = Field(default=30.0, ge=0)
    """After SIGTERM, how long a round in flight may go on before it is cancelled."""
    standings_url: str | None = None
    """A public report to take standings from when the database is empty and our own bucket
    has none (another validator's `public/latest.json`)."""


class ArenaSettings(_Section):
    moat: float = Field(default=0.01, ge=0, lt=1)
    max_challengers_per_round: int = Field(default=8, ge=1)
    """Eight amortise a round's four bookend launches best (`simulate --season`)."""
    min_blocks_between_evaluations: int = Field(default=7200, ge=0)
    max_launches: int = Field(default=8, ge=1)
    sigma_floor: float = Field(default=0.005, gt=0)
    """Hard minimum of the launch-noise bound decisions use (log scale): half the quietest launch
    noise measured (0.9% on one H200, CUDA graphs), so it never binds on real hardware and only
    stops a degenerate history (identical timings) from crowning on nothing."""
    sigma_prior: float = Field(default=0.05, gt=0)
    """The launch noise assumed until three baseline pairs measure it."""
    sigma_confidence: float = Field(default=0.9, ge=0.5, lt=1)
    """One-sided confidence of the upper bound on the launch noise, from the baseline pairs."""
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    """One-sided error of a crown, spent over at most `max_launches` looks (O'Brien-Fleming-type)."""
    leader_share: float = Field(default=0.8, gt=0, le=1)
    """Emission share of the leader; the runner-up gets the rest, or the leader all of it."""
    max_image_gb: float = Field(default=60.0, gt=0)
    registry_allowlist: list[str] = Field(default_factory=list)
    """Registry hosts a commitment may name; empty allows any."""
    base_images: list[str] = Field(default_factory=list)
    """Public images (canonical digest references) whose layers everyone may share, beside the
    baseline's: the engines and CUDA bases miners build on. Their layers never make a copy."""
    copy_tiny_mb: float = Field(default=16.0, ge=0)
    """What an image may add to a protected image's layers or files and still be its copy."""
    copy_file_share: float = Field(default=0.9, gt=0, le=1)
    """Share of a protected image's own file bytes an image must hold to be its copy by files."""


class ModelSettings(_Section):
    name: str = "Qwen/Qwen2.5-72B-Instruct"
    revision: str = "main"
    max_model_len: int = Field(default=32768, ge=1)
    gpu_type: str = "H200"
    gpu_count: int = Field(default=8, ge=0)
    """GPUs a pod must have, all of `gpu_type`; 0 accepts a CPU-only pod (the local demo)."""
    baseline_image: str = "docker.io/vllm/vllm-openai@sha256:" + "0" * 64
    """The pinned vLLM image every contestant is compared with; set the real digest in deployment."""
    source: Literal["hf", "s3"] = "hf"
    """Where the pod fetches the weights: the Hugging Face hub, or the operator's S3 mirror."""
    hf_endpoint: str = "https://huggingface.co"
    manifest: str | None = None
    """JSON file pinning every weight file: {"files": {"<path>": {"sha256": ..., "size": ...}}}."""
    s3_prefix: str = "models"
    """Key prefix of the S3 mirror; a file is at <s3_prefix>/<name>/<revision>/<path>."""
    cache_dir: str | None = None
    """Weight cache on the pod (a provider volume when there is one); unset: <agent_root>/models."""


ProviderName = Literal["targon", "lium", "static"]
DEFAULT_PROVIDERS: tuple[ProviderName, ...] = ("targon", "lium")


class PodSettings(_Section):
    providers: list[ProviderName] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    max_price_per_hour: float = Field(default=40.0, gt=0)
    daily_budget_usd: float = Field(default=500.0, ge=0)
    keep_on_restart: bool = True
    pod_idle_release_s: float = Field(default=1800.0, ge=0)
    max_parallel: int = Field(default=1, ge=1)
    """Rounds run at once, each on its own pod; the budget admits each only while the projected
    spend of all of them fits."""
    name_prefix: str = Field(default="cacheon", pattern=r"^[a-z][a-z0-9-]{1,30}$")
    agent_root: str = "/opt/cacheon-agent"
    """Work directory on the pod: venvs, wheelhouses and job directories live under it."""
    python_url: str | None = None
    """A standalone CPython (.tar.gz, `python/bin/python3` inside) fetched on a pod whose own
    python3 is older than 3.11; unset: such a pod is refused."""
    python_sha256: str | None = None
    ssh_connect_timeout_s: float = Field(default=30.0, gt=0)
    ssh_keepalive_s: float = Field(default=15.0, gt=0)
    targon_api_key: SecretStr | None = None
    lium_api_key: SecretStr | None = None
    ssh_key_path: str = "~/.cacheon/pod_ed25519"
    """The validator's own pod SSH key (`cacheon-validator keys init`); `.pub` beside it."""
    max_lifetime_h: float = Field(default=24.0, gt=0, le=720)
    """A pod older than this is terminated by the sweep, leased or not."""
    ready_timeout_s: float = Field(default=1200.0, gt=0)
    """From rent to SSH answering; a pod not ready by then is terminated."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    api_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one provider API request."""
    targon_base_url: str = "https://api.targon.com/tha/v2"
    targon_ssh_gateway: str = Field(
        default="ssh.deployments.targon.com:22", pattern=r"^[^:\s]+:\d{1,5}$"
    )
    targon_image: str = "ghcr.io/manifold-inc/ubuntu-systemd-docker:v3"
    """The rental's image: it must run sshd and Docker with the NVIDIA runtime."""
    lium_base_url: str = "https://lium.io/api"
    lium_template_id: str | None = None
    """A Lium template with Docker-in-Docker; required when `lium` is a provider."""
    static_hosts: list[str] = Field(default_factory=list)
    """Own machines, `user@host:port <host key type> <base64>` each (`ssh-keyscan` gives the key)."""


class S3Settings(_Section):
    endpoint_url: str | None = None
    bucket: str | None = None
    region: str = "us-east-1"
    prefix: str = "cacheon"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    path_style: bool = False
    """Path-style addressing (endpoint/bucket/key), which MinIO and SeaweedFS need."""
    url_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)
    """Lifetime of a presigned upload URL; the validator refreshes them before they expire."""
    keep_rounds: int = Field(default=500, ge=1)
    """Round prefixes kept in the bucket; older rounds' objects are deleted."""


class WorkloadSettings(_Section):
    """What one round measures (DESIGN.md §4.3); part of the evaluation version."""

    concurrencies: list[int] = Field(default_factory=lambda: [1, 16, 64], min_length=1)
    prompts_per_block: int = Field(default=64, ge=1)
    blocks_per_level: int = Field(default=2, ge=1)
    level_prompts: list[int] = Field(default_factory=lambda: [8, 32, 64])
    """Prompts per block at each concurrency, in the order of `concurrencies` (empty: all take
    `prompts_per_block`)."""
    level_blocks: list[int] = Field(default_factory=lambda: [1, 1, 1])
    """Blocks at each concurrency, likewise (empty: all take `blocks_per_level`)."""
    warmup_requests: int = Field(default=2, ge=0)
    max_tokens: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)
    startup_deadline_s: float = Field(default=1200.0, gt=0)
    """A server must be healthy this long after its start (the miner contract)."""
    round_deadline_s: float = Field(default=4 * 3600.0, gt=0)
    expected_round_hours: float = Field(default=2.0, gt=0)
    """Projected pod time of one round, for budget admission."""

    @model_validator(mode="after")
    def _one_count_per_level(self) -> WorkloadSettings:
        for name in ("level_prompts", "level_blocks"):
            counts = getattr(self, name)
            if counts and len(counts) != len(self.concurrencies):
                raise ValueError(
                    f"{name} has {len(counts)} counts for {len(self.concurrencies)} concurrencies:"
                    " give one per level, in their order, or [] for the same at every level"
                )
        return self


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] | None = None
    """Unset: JSON lines for services, a console for people."""


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9414, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything an operator can set. Sections mirror the TOML tables of `config.example.toml`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    chain: ChainSettings = ChainSettings()
    wallet: WalletSettings = WalletSettings()
    validator: ValidatorSettings = ValidatorSettings()
    arena: ArenaSettings = ArenaSettings()
    model: ModelSettings = ModelSettings()
    pods: PodSettings = PodSettings()
    s3: S3Settings = S3Settings()
    workload: WorkloadSettings = WorkloadSettings()
    log: LogSettings = LogSettings()
    web: WebSettings = WebSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Sources are merged by `load_settings`, which records provenance; construction only
        # validates what it is given.
        return (init_settings,)


BITTENSOR_FLAGS: Mapping[str, str] = {
    "--netuid": "chain.netuid",
    "--wallet.name": "wallet.name",
    "--wallet.hotkey": "wallet.hotkey",
    "--wallet.path": "wallet.path",
    "--subtensor.network": "chain.network",
    "--subtensor.chain_endpoint": "chain.chain_endpoint",
}


_FLAG_METAVARS: Mapping[str, str] = {
    "--netuid": "NETUID",
    "--wallet.name": "NAME",
    "--wallet.hotkey": "HOTKEY",
    "--wallet.path": "PATH",
    "--subtensor.network": "NETWORK",
    "--subtensor.chain_endpoint": "URL",
}
"""What each flag's value is called in help, as btcli names it."""


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one human line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    sources: Mapping[str, str]
    """Dotted key -> where its value came from (`default`, `file <path>`, `env NAME`, `flag --x`)."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and the standard bittensor flags to a CLI parser."""
    parser.add_argument(
        "--config", metavar="PATH", type=Path, help="TOML config file (see config.example.toml)"
    )
    for flag, key in BITTENSOR_FLAGS.items():
        parser.add_argument(
            flag,
            dest=_flag_dest(flag),
            metavar=_FLAG_METAVARS[flag],
            default=None,
            help=f"sets {key}",
        )


def load_settings(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Merge defaults, file, environment and flags; raise ConfigError listing every problem."""
    layers: list[tuple[dict[str, Any], dict[str, str]]] = []
    config_path: Path | None = getattr(args, "config", None) if args is not None else None
    if config_path is not None:
        data = _read_toml(config_path)
        layers.append((data, dict.fromkeys(_leaf_keys(data), f"file {config_path}")))
    env_data, env_sources = _read_env(environ)
    layers.append((env_data, env_sources))
    if args is not None:
        flag_data, flag_sources = _read_flags(args)
        layers.append((flag_data, flag_sources))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for data, layer_sources in layers:
        _deep_merge(merged, data)
        sources.update(layer_sources)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError([_describe(err, sources) for err in exc.errors()]) from None
    all_sources = {key: sources.get(key, "default") for key in _leaf_keys(settings.model_dump())}
    return LoadedSettings(settings=settings, sources=all_sources)


def render_settings(loaded: LoadedSettings) -> str:
    """The effective configuration as TOML-like lines, secrets redacted, with each value's source."""
    lines: list[str] = []
    section = None
    for key, value in _leaves(_dump(loaded.settings)):
        head, _, name = key.rpartition(".")
        if head != section:
            if lines:
                lines.append("")
            lines.append(f"[{head}]")
            section = head
        lines.append(f"{name} = {_toml_value(value)}  # {loaded.sources.get(key, 'default')}")
    return "\n".join(lines)


REDACTED = "**********"


def _dump(settings: Settings) -> dict[str, Any]:
    def walk(model: BaseModel) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                out[name] = walk(value)
            elif isinstance(value, SecretStr):
                out[name] = REDACTED
            else:
                out[name] = value
        return out

    return walk(settings)


def _toml_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes before it parses them
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None


def _read_env(environ: Mapping[str, str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    source = EnvSettingsSource(Settings)
    if environ is not None:
        source.env_vars = {k.lower(): v for k, v in environ.items()}
    try:
        data = source()
    except Exception as exc:  # pydantic-settings raises SettingsError on undecodable JSON values
        raise ConfigError([f"environment: {exc}"]) from None
    names = {
        key: f"env {ENV_PREFIX}{key.upper().replace('.', ENV_NESTED_DELIMITER)}"
        for key in _leaf_keys(data)
    }
    return data, names


def _read_flags(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for flag, key in BITTENSOR_FLAGS.items():
        value = getattr(args, _flag_dest(flag), None)
        if value is None:
            continue
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
        sources[key] = f"flag {flag}"
    return data, sources


def _flag_dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-").replace(".", "_")


def _describe(error: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    # a list item (pods.providers.0) came from wherever its list did
    origin = next(
        (sources[k] for n in range(len(loc), 0, -1) if (k := ".".join(loc[:n])) in sources), None
    )
    where = f" (from {origin})" if origin else ""
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key{where}; allowed here: {_allowed_keys(error['loc'][:-1])}"
    if error["type"] == "model_type":
        return f"{key}: must be a table{where}"
    value = error.get("input")
    shown = (
        "" if isinstance(value, dict) or "secret" in key or "api_key" in key else f", got {value!r}"
    )
    return f"{key}: {error['msg']}{shown}{where}"


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Settings
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "?"
        model = annotation
    return ", ".join(model.model_fields)


def _deep_merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _leaf_keys(data: Mapping[str, Any]) -> list[str]:
    return [key for key, _ in _leaves(data)]
