"""Copies that change the leader's layers but not its files are found by the agent's fingerprint.

Done when (issue 18, finding 3b): a squashed copy of the leader and the leader's files cut into
new layers under a tiny top layer have layers the leader's layer check cannot match, yet their
fingerprints, taken by the agent's own pull, make `arena.file_copy` name the leader; an image
built on the same base with files of its own is no copy; an image with no layer of its own is not
fingerprinted at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cacheon.agent.runtime import DockerRuntime, RunProfile, ServerSpec
from cacheon.arena.copies import file_copy, file_match
from cacheon.arena.params import ArenaParams
from cacheon.protocol import FileFingerprint, Hotkey, ImageFacts
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_copies import push_relayered_copy, push_squashed_copy
from cacheon.testing.toy_image import Payload, base_layers, push_toy_image
from tests.agent.agent_toys import MODEL

ENGINE = (300_000, 700_000, 1_200_000, *([3_000] * 400))
"""A toy miner's own work: three large files and 400 small ones (about 3.4 MB)."""


def _pull_all(
    daemon: DockerDaemon, images: dict[str, str], base: frozenset[str]
) -> dict[str, ImageFacts]:
    client = daemon.client()
    try:
        spec = ServerSpec(MODEL, "/nonexistent", 512, base)
        runtime = DockerRuntime(client, RunProfile.for_host(), spec)

        async def pull() -> dict[str, ImageFacts]:
            return {name: await runtime.pull(image) for name, image in images.items()}

        return asyncio.run(pull())
    finally:
        client.close()


def _copy_of_leader(candidate: FileFingerprint, leader: FileFingerprint) -> Hotkey | None:
    found = file_copy(
        candidate,
        [(Hotkey("leader"), leader)],
        contained=ArenaParams.copy_file_share,  # the arena's defaults
        tiny_bytes=ArenaParams.copy_tiny_bytes,
    )
    return None if found is None else found.of


def test_squashed_and_relayered_copies_are_found_by_their_files(
    docker_daemon: DockerDaemon, registry: Registry, tmp_path: Path
) -> None:
    push = docker_daemon, registry
    leader = push_toy_image(*push, "files/leader", payload=Payload("/opt/engine", ENGINE, seed=1))
    images = {
        "leader": leader,
        "squashed": push_squashed_copy(*push, leader, "files/squashed"),
        "relayered": push_relayered_copy(*push, leader, "files/relayered"),
        "independent": push_toy_image(
            *push, "files/independent", payload=Payload("/opt/engine", ENGINE, seed=2)
        ),
        "plain": push_toy_image(*push, "files/plain"),
    }
    base = frozenset(base_layers(docker_daemon))
    facts = _pull_all(docker_daemon, images, base)
    files = {name: f.files for name, f in facts.items()}
    for name, f in files.items():  # shown with -rA
        detail = (
            ""
            if f is None
            else f"{f.files} files, {f.bytes / 1e6:.1f} MB, {len(f.samples)} sampled"
        )
        print(f"{name:<12} layers {len(facts[name].layer_diff_ids)}  {detail}")

    assert files["plain"] is None  # nothing of its own: the layer check's, not the files'
    theirs = files["leader"]
    assert theirs is not None
    own = [size for _, size, is_own in theirs.samples if is_own]
    assert len(own) >= 3
    assert sum(own) >= 2_200_000
    leader_layers = set(facts["leader"].layer_diff_ids)
    for copy in ("squashed", "relayered"):
        mine = files[copy]
        assert mine is not None
        assert not leader_layers - base <= set(facts[copy].layer_diff_ids)  # layers hide it...
        assert _copy_of_leader(mine, theirs) == "leader", file_match(mine, theirs)  # ...files not
    independent = files["independent"]
    assert independent is not None
    assert _copy_of_leader(independent, theirs) is None
    match = file_match(independent, theirs)
    assert match is not None
    assert match.contained == 0.0
