"""Measure the verdict rules against the issue's targets: `python bench/verdict_sim.py [TRIALS]`.

Prints the simulator's table, the sequential rule beside the naive one-launch rule, at launch
noise 1%, 2% and 5%, without and with 5% outlier launches, with the default arena settings and
the launch noise estimated online from the simulated B/B' pairs. Thin by design: the
simulation itself is `cacheon.arena.simulate`, also run by `cacheon-validator simulate`.
"""

from __future__ import annotations

import random
import sys
import time

from cacheon.arena import simulate
from cacheon.cli.validator import arena_params
from cacheon.config import ArenaSettings


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    params = arena_params(ArenaSettings())
    rng = random.Random(14)  # noqa: S311 (a reproducible simulation, not a secret)
    for outliers in (0.0, 0.05):
        for launch_noise in (0.01, 0.02, 0.05):
            started = time.perf_counter()
            noise = simulate.Noise(launch=launch_noise, block=0.002, outliers=outliers)
            table = simulate.run(rng, noise, params, trials=trials, power_limit=256)
            print(f"outlier launches: {outliers:.0%} (sd 10%)")
            print(simulate.render(table))
            print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
