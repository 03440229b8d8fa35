"""One real vLLM (CPU) per test session, serving the tiny Qwen2; every test here is `vllm`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cacheon.testing.vllm_server import VllmServer


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer.start(tmp_path_factory.mktemp("vllm"))
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the vLLM engine runs in the final serial vLLM phase, marked or not."""
    for item in items:
        if "vllm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)
