"""Time and memory of the agent's file fingerprint on a large image (issue 18, finding 3b).

The agent fingerprints every pulled image with files of its own (`cacheon.agent.fingerprint`)
by reading `docker save`'s stream; it must stream, never hold an image in memory. This builds a
toy image on a private dockerd with a payload of seeded files (many small ones and some large,
about `--gb` GB in all) on the toy base, then in a fresh process reads the engine's `docker save`
stream once into a file without parsing it (what the engine alone costs), fingerprints that file
(what the fingerprint's own parsing and hashing cost) and fingerprints the image as the agent's
pull does, from the engine's stream. It prints both times and throughputs, the process's peak RSS during the
fingerprint (the kernel's high-water mark, reset just before) against its RSS before it, and
what the fingerprint holds.

Usage: `python bench/fingerprint_bench.py [--gb 1.5] [--small 40000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cacheon.agent.fingerprint import fingerprint_image, fingerprint_saved  # noqa: E402
from cacheon.testing.services import DockerDaemon, Registry  # noqa: E402
from cacheon.testing.toy_image import Payload, base_layers, push_toy_image  # noqa: E402

SMALL_SIZES = (200, 20_000)
"""Bytes of the small files, uniform: Python sources, configs, small libraries."""
LARGE_SIZES = (300_000, 64_000_000)
"""Bytes of the large files, log-uniform: shared objects, kernels, wheels' data."""


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc (VmRSS now, VmHWM its peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _payload(gb: float, small: int) -> Payload:
    rng = random.Random(18)  # noqa: S311 (a reproducible bench)
    sizes = [rng.randint(*SMALL_SIZES) for _ in range(small)]
    budget = int(gb * 1e9) - sum(sizes)
    low, high = LARGE_SIZES
    while budget > low:
        size = min(budget, int(low * (high / low) ** rng.random()))
        sizes.append(size)
        budget -= size
    rng.shuffle(sizes)
    return Payload("/opt/engine", tuple(sizes), seed=18)


def _fingerprint(host: str, tag: str, base: tuple[str, ...], out: dict[str, float]) -> None:
    """In a fresh process: the fingerprint, its time and the process's memory around it."""
    import docker

    client = docker.DockerClient(base_url=host, timeout=600)
    image = client.images.get(tag)
    layers = tuple(image.attrs["RootFS"]["Layers"])
    with tempfile.TemporaryFile() as saved:
        started = time.perf_counter()
        for chunk in image.save(chunk_size=1 << 20):
            saved.write(chunk)
        out["save_seconds"] = time.perf_counter() - started
        out["saved_bytes"] = saved.tell()
        saved.seek(0)
        started = time.perf_counter()
        fingerprint_saved(
            iter(functools.partial(saved.read, 1 << 20), b""), layers, frozenset(base)
        )
        out["parse_seconds"] = time.perf_counter() - started
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the RSS of now
    out["rss_before_mb"] = _status_mb("VmRSS")
    started = time.perf_counter()
    files = asyncio.run(fingerprint_image(image, layers, frozenset(base)))
    out["seconds"] = time.perf_counter() - started
    out["rss_peak_mb"] = _status_mb("VmHWM")
    assert files is not None
    out["files"] = files.files
    out["bytes"] = files.bytes
    out["samples"] = len(files.samples)
    out["own_samples"] = sum(1 for _, _, own in files.samples if own)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.5, help="payload size in GB")
    parser.add_argument("--small", type=int, default=40_000, help="small files in the payload")
    args = parser.parse_args()
    payload = _payload(args.gb, args.small)
    daemon = DockerDaemon.start()
    try:
        registry = Registry.start()
        try:
            started = time.perf_counter()
            tag = push_toy_image(daemon, registry, "bench/large", payload=payload, push=False)
            built = time.perf_counter() - started
            base = base_layers(daemon)
            out = multiprocessing.get_context("spawn").Manager().dict()
            child = multiprocessing.get_context("spawn").Process(
                target=_fingerprint, args=(daemon.host, tag, base, out)
            )
            child.start()
            child.join()
            result = dict(out)
        finally:
            registry.stop()
    finally:
        daemon.stop()
    total = result["bytes"] / 1e9
    print(
        f"payload: {len(payload.sizes)} files, {sum(payload.sizes) / 1e9:.2f} GB"
        f" (built in {built:.0f} s)"
    )
    print(f"image: {result['files']:.0f} regular files, {total:.2f} GB")
    saved = result["saved_bytes"] / 1e9
    print(
        f"docker save alone: {saved:.2f} GB in {result['save_seconds']:.1f} s"
        f" ({saved / result['save_seconds']:.2f} GB/s)"
    )
    print(
        f"the fingerprint's own work (the same save from a file): {result['parse_seconds']:.1f} s"
        f" ({saved / result['parse_seconds']:.2f} GB/s)"
    )
    print(
        f"fingerprint: {result['seconds']:.1f} s ({saved / result['seconds']:.2f} GB/s of the"
        f" save), {result['samples']:.0f} samples ({result['own_samples']:.0f} own)"
    )
    print(
        f"memory: peak RSS {result['rss_peak_mb']:.0f} MB, {result['rss_before_mb']:.0f} MB before"
        f" the fingerprint: +{result['rss_peak_mb'] - result['rss_before_mb']:.0f} MB for a"
        f" {total:.2f} GB image"
    )


if __name__ == "__main__":
    main()
