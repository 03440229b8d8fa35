"""Fixtures for the agent: toy contestant images in the test registry, a model dir, a job context."""

from __future__ import annotations

from pathlib import Path

import pytest

from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_server import Knobs
from tests.agent.agent_toys import RecordingContext, ToyImage


@pytest.fixture
def ctx(tmp_path: Path) -> RecordingContext:
    return RecordingContext(tmp_path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "tokenizer_config.json").write_text('{"chat_template": "toy"}')
    (path / "generation_config.json").write_text('{"eos_token_id": 0}')  # the toy's EOS
    return path


@pytest.fixture(scope="session")
def toy_image(docker_daemon: DockerDaemon, registry: Registry) -> ToyImage:
    """Push a toy image once per session per name; returns its canonical digest reference."""
    built: dict[str, str] = {}

    def get(name: str, knobs: Knobs | None = None, **kwargs: object) -> str:
        if name not in built:
            built[name] = push_toy_image(docker_daemon, registry, f"toy/{name}", knobs, **kwargs)  # type: ignore[arg-type]
        return built[name]

    return get
