"""The agent runs on a pod with only the base install: it must import nothing validator-only."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import cacheon

VALIDATOR_ONLY = (
    "bittensor",
    "boto3",
    "botocore",
    "asyncssh",
    "pydantic_settings",
    "prometheus_client",
    "rich",
)
FORBIDDEN_PROJECT = (
    "cacheon.chain",
    "cacheon.pods",
    "cacheon.store",
    "cacheon.validator",
    "cacheon.config",
)


def _agent_modules() -> list[str]:
    modules = ["cacheon.cli.agent", "cacheon.protocol"]
    agent_dir = Path(cacheon.__file__).parent / "agent"
    if agent_dir.is_dir():
        modules.append("cacheon.agent")
        modules += [f"cacheon.agent.{m.name}" for m in pkgutil.iter_modules([str(agent_dir)])]
    return modules


def test_agent_imports_nothing_validator_only() -> None:
    # A meta-path hook makes every validator-only package unimportable, as on a bare pod.
    script = f"""
import importlib, importlib.abc, sys
BLOCKED = {VALIDATOR_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"validator-only module imported on the agent side: {{name}}")
sys.meta_path.insert(0, Block())
for module in {_agent_modules()!r}:
    importlib.import_module(module)
bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN_PROJECT!r}))
assert not bad, f"agent imported validator-side modules: {{bad}}"
print("ok", len(sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_the_check_would_catch_a_violation() -> None:
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {VALIDATOR_ONLY!r}:
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import cacheon.config
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "pydantic_settings" in result.stderr
