"""Launch noise and the known-effect check on a GPU (issue 19), through the agent's round runner.

Why: the arena crowns on the launch-to-launch noise it measures (DESIGN.md §4.5), so that noise
and the decision rule are checked against a server whose effect is known. One round of the real
round runner (process runtime) around `gpu_server.py`, laid out

    B, L, C,  B, L, C,  ...  (--looks times),  B, L

where B (baseline) and C (challenger) are the same unslowed server and L (leader) is that server
with `--slowdown s`, every engine step stretched to (1 + s) times its duration. From it:

(a) launch noise: the log speed of every unslowed launch (B and C), its sd per level and overall,
    the adjacent-pair sd, and the spread of the B pairs (B1/B2, B3/B4, ...: the trusted pairs);
(b) the known effect: C against the bookended L, looked at after each C launch with the arena's
    `compare` and `look`, until the arena decides; the measured ratio against the true one, taken
    from the server's own timestamps (what L applied: its write times against its engine's
    natural clock), and the natural clocks compared (did the stretch change the engine?);
(c) the control: C against the baseline B with no incumbent (unslowed vs unslowed): never crowned;
(d) the per-request noise that does not cancel between contestants (the season simulator's
    `request_noise`), from a two-way decomposition of the requests' log speeds (launch x prompt)
    and checked on a subsample of fewer prompts per level; `--shape-launches N` adds a second
    round of N unslowed launches at `--shape-prompts` prompts per level, measured for real.

Looks use two noises, both printed: `bound`, the arena's `noise_bound` over every trusted B pair
of the session (what a validator's history of that many pairs gives), and `known`, the
adjacent-pair sd of the unslowed launches as `LaunchNoise.known` (a long history's limit).

    python bench/launch_noise.py --out /tmp/ln [--looks 8 --slowdown 0.03] [-- server args]
    python bench/launch_noise.py --analyse /tmp/ln/raw.json      # again, from the saved data

Writes raw.json (every launch's speeds and per-request client and server times), result.json
and the logs under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import socket
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from gpu_timing_check import KeepingContext, TimingOnlyRunner, read_server

from cacheon.agent.runtime import ProcessRuntime, ServerSpec
from cacheon.agent.workload import request_body
from cacheon.arena.measure import Entry, Evidence, Roster, TimedSpeed, compare, launch_speeds
from cacheon.arena.params import ArenaParams
from cacheon.arena.verdict import Call, LaunchNoise, look, noise_bound
from cacheon.protocol import Contestant, Digest, JobSpec, Outcome, Role, Workload

SERVER = Path(__file__).with_name("gpu_server.py")
UNSLOWED = ("B", "C")
ROLES = {"B": Role.BASELINE, "L": Role.LEADER, "C": Role.CHALLENGER}
Request = list[int]
"""[concurrency, block, prompt, client T_k, server write T_k, natural T_k, transit], in ns; the
server's times run from the request's arrival at its handler, the natural one on the engine's
natural clock (the waits a slowdown added taken out)."""


# --- the run (on the GPU machine) ---------------------------------------------------------------


def layout(looks: int) -> tuple[str, ...]:
    return (*("B", "L", "C") * looks, "B", "L")


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            if (port := int(sock.getsockname()[1])) not in ports:
                ports.append(port)
    return ports


def run_round(
    args: argparse.Namespace, name: str, order: Sequence[str], workload: Workload
) -> dict[str, Any]:
    """One round of the real round runner; every launch's speed, time and requests."""
    out: Path = (args.out / name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [
        args.server_python,
        str(SERVER),
        "--port",
        "{port}",
        "--model-name",
        args.model,
        "--timestamps",
        str(out / "server-{port}.jsonl"),
        *args.server_args,
    ]
    commands = {
        key: [*base, *(["--slowdown", str(args.slowdown)] if key == "L" else [])]
        for key in dict.fromkeys(order)
    }
    images = {
        key: "local/gpu-server@sha256:" + hashlib.sha256(f"{key} {command}".encode()).hexdigest()
        for key, command in commands.items()
    }
    spec = JobSpec(
        round_id=f"launch-noise-{name}",
        seed=hashlib.sha256(f"launch-noise-{name}".encode()).hexdigest(),
        served_model_name=args.model,
        model_path=str(out),
        max_model_len=args.max_model_len,
        contestants=tuple(Contestant(key=k, role=ROLES[k], image=images[k]) for k in commands),
        launch_order=tuple(order),
        workload=workload,
        startup_deadline_s=args.startup_deadline_s,
    )
    ports = _free_ports(len(order))  # one per launch: the server's timestamp file is named by it
    runtime = ProcessRuntime(
        {images[k]: c for k, c in commands.items()},
        ServerSpec(args.model, str(out), args.max_model_len),
        ports,
    )
    ctx = KeepingContext(out)
    runner = TimingOnlyRunner(spec, runtime, ctx)
    report = asyncio.run(runner.run())
    (out / "report.json").write_text(report.model_dump_json(indent=1))
    failed = [
        f"{x.index} {x.contestant}: {x.reason} {x.detail}" for x in report.launches if x.reason
    ]
    if failed or len(report.launches) != len(order):
        raise SystemExit(f"round {name}: launches failed or were skipped: {failed}")
    # the correctness pass is not what this measures (the GPU server has no teacher endpoint)
    passed = report.model_copy(
        update={
            "results": tuple(
                r.model_copy(update={"outcome": Outcome.PASS, "reason": None})
                for r in report.results
            )
        }
    )
    speeds = launch_speeds(passed)  # every launch measured, so one speed per launch, in order
    launches, servers = [], []
    baseline: dict[tuple[int, int, int], int] = {}
    for launch, timed, records, port in zip(
        report.launches, speeds, ctx.traces, ports, strict=True
    ):
        header, by_id = read_server(out / f"server-{port}.jsonl")
        servers.append(header)
        requests: list[Request] = []
        for record in records:
            where = (record.concurrency, record.block, record.prompt)
            n = len(record.token_ns)
            if launch.contestant == "B":  # k: the baseline's answer length (DESIGN.md §4.3)
                baseline.setdefault(where, n)
            k = min(baseline.get(where, n), n)
            prompt = runner._block(record.concurrency, record.block)[record.prompt]
            server = by_id.get(hashlib.sha256(request_body(prompt, args.model)).hexdigest())
            if record.error or not k or server is None or len(server["write_ns"]) < k:
                continue
            recv = server["recv_ns"]
            requests.append(
                [
                    *where,
                    record.token_ns[k - 1],
                    server["write_ns"][k - 1] - recv,
                    server["natural_ns"][k - 1] - server["natural_recv_ns"],
                    recv - record.sent_ns,
                ]
            )
        levels: dict[int, list[float]] = defaultdict(list)
        for block in launch.levels:
            if not block.client_saturated and block.speed > 0:
                levels[block.concurrency] += [math.log(block.speed)] * block.requests
        launches.append(
            {
                "index": launch.index,
                "key": launch.contestant,
                "at": timed.at,
                "log_speed": timed.log_speed,
                "levels": {str(c): statistics.fmean(v) for c, v in sorted(levels.items())},
                "wall_s": (launch.ended_ns - launch.started_ns) / 1e9,
                "requests": requests,
            }
        )
    return {
        "name": name,
        "workload": workload.model_dump(),
        "servers": servers,
        "launches": launches,
    }


# --- the analysis (anywhere) -------------------------------------------------------------------


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _pair_sd(values: Sequence[float]) -> float:
    """sigma from differences of neighbours: sqrt(mean d^2 / 2); slow drift barely enters."""
    diffs = [b - a for a, b in itertools.pairwise(values)]
    return math.sqrt(math.fsum(d * d for d in diffs) / len(diffs) / 2) if diffs else math.nan


def _launch_log_speed(launch: dict[str, Any], column: int, prompts: int | None = None) -> float:
    """The arena's formula over this launch's requests: the mean of -log T_k per level, then the
    equal-weight mean over levels; `prompts` keeps only the first that many of each block."""
    levels: dict[int, list[float]] = defaultdict(list)
    for request in launch["requests"]:
        if prompts is None or request[2] < prompts:
            levels[request[0]].append(-math.log(request[column] / 1e9))
    return statistics.fmean(statistics.fmean(v) for v in levels.values())


def noise_summary(launches: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """sd of the log speed over these contestants' launches, per level and overall, in time
    order, plain and from adjacent pairs."""
    chosen = [x for x in sorted(launches, key=lambda x: x["at"]) if x["key"] in keys]
    overall = [x["log_speed"] for x in chosen]
    levels = sorted({c for x in chosen for c in x["levels"]}, key=int)
    return {
        "launches": len(chosen),
        "sd": _sd(overall),
        "pair_sd": _pair_sd(overall),
        "levels": {
            c: {
                "sd": _sd([x["levels"][c] for x in chosen]),
                "pair_sd": _pair_sd([x["levels"][c] for x in chosen]),
            }
            for c in levels
        },
        "wall_s_mean": statistics.fmean(x["wall_s"] for x in chosen),
    }


def baseline_pairs(launches: list[dict[str, Any]]) -> list[float]:
    """log(B_2i / B_2i-1): disjoint pairs of consecutive baseline launches, the trusted pairs."""
    b = [x["log_speed"] for x in sorted(launches, key=lambda x: x["at"]) if x["key"] == "B"]
    return [b[i + 1] - b[i] for i in range(0, len(b) - 1, 2)]


def _entry(key: str) -> Entry:
    return Entry(key, Digest("sha256:" + hashlib.sha256(key.encode()).hexdigest()))


def _minus(later: Evidence, earlier: Evidence | None) -> Evidence:
    """The evidence one more launch added: all the launches' evidence less the earlier ones'
    (the variance units differ by more than one launch's: neighbours share opponent launches)."""
    if earlier is None:
        return later
    return Evidence(
        later.against,
        later.launches - earlier.launches,
        later.total - earlier.total,
        later.variance_units - earlier.variance_units,
        later.squares - earlier.squares,
    )


def looks(
    launches: list[dict[str, Any]],
    roster: Roster,
    noise: LaunchNoise,
    params: ArenaParams,
    speed: str = "log_speed",
) -> list[dict[str, Any]]:
    """The arena's look after each challenger launch, on the launches it would have by then
    (up to and including the opponent's launch after it), until it decides."""
    ordered = sorted(launches, key=lambda x: x["at"])
    challenger = roster.challengers[0]
    out: list[dict[str, Any]] = []
    prior: Evidence | None = None
    for position, launch in enumerate(ordered):
        if launch["key"] != challenger.key:
            continue
        prefix = ordered[: position + 3]  # its B and L neighbours after it (layout B, L, C)
        timed = [TimedSpeed(x["key"], x["at"], x[speed]) for x in prefix]
        measured = compare(roster, timed, noise.core)
        evidence = measured.tests.get(challenger.digest)
        if measured.void is not None or evidence is None:
            out.append({"launches": (prior.launches if prior else 0), "void": str(measured.void)})
            continue
        decision = look(prior, _minus(evidence, prior), noise, params)
        prior = decision.evidence
        out.append(
            {
                "launches": prior.launches,
                "call": decision.call.value,
                "ratio": math.exp(decision.bounds.estimate),
                "lower": math.exp(decision.bounds.lower),
                "upper": math.exp(decision.bounds.upper),
                "level": decision.level,
            }
        )
        if decision.call is not Call.PENDING:
            break
    return out


def request_noise(launches: list[dict[str, Any]]) -> dict[str, Any]:
    """Per level, the sd of a request's log speed left after its launch's offset and its prompt's
    own speed are taken out (two-way decomposition over launches x prompts): the part of each
    request that does not cancel between contestants, `SeasonConfig.request_noise`."""
    chosen = [x for x in launches if x["key"] in UNSLOWED]
    per_level: dict[str, Any] = {}
    for c in sorted({r[0] for x in chosen for r in x["requests"]}):
        table: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        for i, launch in enumerate(chosen):
            for r in launch["requests"]:
                if r[0] == c:
                    table[(r[1], r[2])][i] = -math.log(r[3] / 1e9)
        rows = [row for row in table.values() if len(row) == len(chosen)]
        grand = statistics.fmean(v for row in rows for v in row.values())
        prompt_mean = [statistics.fmean(row.values()) for row in rows]
        launch_mean = [statistics.fmean(row[i] for row in rows) for i in range(len(chosen))]
        squares = math.fsum(
            (row[i] - pm - launch_mean[i] + grand) ** 2
            for row, pm in zip(rows, prompt_mean, strict=True)
            for i in range(len(chosen))
        )
        dof = (len(rows) - 1) * (len(chosen) - 1)
        per_level[str(c)] = {"prompts": len(rows), "request_noise": math.sqrt(squares / dof)}
    pooled = math.sqrt(statistics.fmean(v["request_noise"] ** 2 for v in per_level.values()))
    return {"levels": per_level, "pooled": pooled}


def subsample(launches: list[dict[str, Any]], prompts: int, rn: float) -> dict[str, float]:
    """The unslowed launches' adjacent-pair sd with all prompts and with the first `prompts` of
    each block, beside what launch offset + request_noise / sqrt(N) predicts for the latter."""
    chosen = [x for x in sorted(launches, key=lambda x: x["at"]) if x["key"] in UNSLOWED]
    full = _pair_sd([_launch_log_speed(x, 3) for x in chosen])
    few = _pair_sd([_launch_log_speed(x, 3, prompts) for x in chosen])
    counts: dict[int, int] = defaultdict(int)
    for r in chosen[0]["requests"]:
        counts[r[0]] += 1
    blocks = {c: len({r[1] for r in chosen[0]["requests"] if r[0] == c}) for c in counts}

    def request_part(per_level: dict[int, int]) -> float:
        return math.fsum(rn**2 / n for n in per_level.values()) / len(per_level) ** 2

    offset = math.sqrt(max(0.0, full**2 - request_part(counts)))
    small = {c: min(prompts * blocks[c], counts[c]) for c in counts}
    return {
        "prompts": prompts,
        "pair_sd_all": full,
        "pair_sd_subsample": few,
        "offset_sd": offset,
        "predicted_subsample": math.sqrt(offset**2 + request_part(small)),
    }


def truth(launches: list[dict[str, Any]]) -> dict[str, float]:
    """What the slowed server actually applied, from its own clock: per launch, the log speed
    from its write times less that on its natural clock (the added waits, plus the hand-off
    every server has), L's mean against the unslowed launches' mean."""
    applied: dict[str, list[float]] = defaultdict(list)
    for x in launches:
        applied[x["key"]].append(_launch_log_speed(x, 4) - _launch_log_speed(x, 5))
    unslowed = statistics.fmean(applied["B"] + applied["C"])
    per_l = [unslowed - a for a in applied["L"]]
    return {
        "ratio": math.exp(statistics.fmean(per_l)),
        "per_launch_min": math.exp(min(per_l)),
        "per_launch_max": math.exp(max(per_l)),
    }


def _ratio_all(launches: list[dict[str, Any]], roster: Roster, speed: str) -> float:
    """The challenger's mean ratio over all its launches, with the given log speeds."""
    timed = [TimedSpeed(x["key"], x["at"], x[speed]) for x in launches]
    evidence = compare(roster, timed, 1.0).tests[roster.challengers[0].digest]
    return math.exp(evidence.mean)


def analyse(
    raw: dict[str, Any], floors: Sequence[float], history: Sequence[float] = ()
) -> dict[str, Any]:
    """Every number of the module docstring; `history`: trusted pairs of earlier rounds."""
    effect = raw["rounds"][0]["launches"]
    for x in effect:  # the server's and the engine's view of each launch's speed
        x["server_log_speed"] = _launch_log_speed(x, 4)
        x["natural_log_speed"] = _launch_log_speed(x, 5)
        x["client_log_speed"] = _launch_log_speed(x, 3)
    pairs = [*history, *(p for r in raw["rounds"] for p in baseline_pairs(r["launches"]))]
    unslowed = noise_summary(effect, UNSLOWED)
    result: dict[str, Any] = {
        "noise": {
            "unslowed": unslowed,
            "slowed": noise_summary(effect, ("L",)),
            "baseline_pairs": pairs,
            "baseline_pair_sigma": math.sqrt(math.fsum(p * p for p in pairs) / len(pairs) / 2),
            "round_bb": [
                r["name"] + ": " + f"{bookends(r['launches']):+.4f}" for r in raw["rounds"]
            ],
        },
        "consistency_max_diff": max(abs(x["client_log_speed"] - x["log_speed"]) for x in effect),
    }
    leader = Roster(_entry("B"), _entry("L"), (_entry("C"),))
    control = Roster(_entry("B"), None, (_entry("C"),))
    true = truth(effect)
    measured_all = _ratio_all(effect, leader, "log_speed")
    result["effect"] = {
        "nominal": 1 + raw["config"]["slowdown"],
        "true": true,
        "measured_all_launches": measured_all,
        "measured_vs_true": measured_all / true["ratio"] - 1,
        "server_write_all_launches": _ratio_all(effect, leader, "server_log_speed"),
        "natural_all_launches": _ratio_all(effect, leader, "natural_log_speed"),
    }
    result["control_all_launches"] = _ratio_all(effect, control, "log_speed")
    result["decisions"] = {}
    for floor in floors:
        params = _params(floor)
        for name, noise in (
            ("bound", noise_bound(pairs, params)),
            ("known", LaunchNoise.known(max(floor, unslowed["pair_sd"]))),
        ):
            result["decisions"][f"floor {floor:g}, {name}"] = {
                "sigma": [noise.core, noise.tail],
                "effect": looks(effect, leader, noise, params),
                "control": looks(effect, control, noise, params),
            }
    rn = request_noise(effect)
    result["request_noise"] = {**rn, "check": subsample(effect, 16, rn["pooled"])}
    if len(raw["rounds"]) > 1:
        shape = raw["rounds"][1]
        result["shape"] = {
            "workload": shape["workload"],
            "noise": noise_summary(shape["launches"], UNSLOWED),
        }
    return result


def bookends(launches: list[dict[str, Any]]) -> float:
    b = [x["log_speed"] for x in sorted(launches, key=lambda x: x["at"]) if x["key"] == "B"]
    return b[-1] - b[0]


def _params(floor: float) -> ArenaParams:
    """The arena's defaults (`ArenaSettings`), with the noise floor under test."""
    return ArenaParams(
        moat=0.01,
        alpha=0.01,
        max_launches=8,
        sigma_floor=floor,
        max_challengers_per_round=4,
        min_blocks_between_evaluations=0,
        leader_share=0.8,
    )


def render(result: dict[str, Any]) -> str:
    n, e = result["noise"], result["effect"]
    u = n["unslowed"]
    lines = [
        f"unslowed launches: {u['launches']}, {u['wall_s_mean']:.1f} s each; log-speed sd "
        f"{u['sd']:.4f}, adjacent-pair sd {u['pair_sd']:.4f}; per level "
        + ", ".join(
            f"c={c}: {v['sd']:.4f} (pairs {v['pair_sd']:.4f})" for c, v in u["levels"].items()
        ),
        f"slowed launches: {n['slowed']['launches']}, sd {n['slowed']['sd']:.4f}, "
        f"adjacent-pair sd {n['slowed']['pair_sd']:.4f}",
        f"baseline pairs {len(n['baseline_pairs'])}: sigma {n['baseline_pair_sigma']:.4f}; "
        f"bookend log(B'/B) {', '.join(n['round_bb'])}",
        f"true ratio (server clock) {e['true']['ratio']:.4f} (per L launch "
        f"{e['true']['per_launch_min']:.4f}-{e['true']['per_launch_max']:.4f}, nominal "
        f"{e['nominal']:.4f}); measured over all launches {e['measured_all_launches']:.4f} "
        f"({e['measured_vs_true']:+.2%} off); server writes {e['server_write_all_launches']:.4f}; "
        f"natural clocks {e['natural_all_launches']:.4f}",
        f"control (C vs B) over all launches {result['control_all_launches']:.4f}",
    ]
    for name, d in result["decisions"].items():
        for what in ("effect", "control"):
            steps = " ".join(
                f"{s['launches']}:{s['call'][0]}[{s['lower']:.4f},{s['ratio']:.4f}]"
                if "call" in s
                else f"void({s['void']})"
                for s in d[what]
            )
            lines.append(f"{name} (sigma {d['sigma'][0]:.4f}/{d['sigma'][1]:.4f}) {what}: {steps}")
    rn = result["request_noise"]
    check = rn["check"]
    lines.append(
        f"request noise pooled {rn['pooled']:.4f} ("
        + ", ".join(f"c={c}: {v['request_noise']:.4f}" for c, v in rn["levels"].items())
        + f"); launch offset sd {check['offset_sd']:.4f}; first {check['prompts']} prompts of "
        f"each block: pair sd {check['pair_sd_subsample']:.4f} measured vs "
        f"{check['predicted_subsample']:.4f} predicted (all prompts {check['pair_sd_all']:.4f})"
    )
    if "shape" in result:
        s = result["shape"]["noise"]
        lines.append(
            f"second shape {result['shape']['workload'].get('level_prompts')}: "
            f"{s['launches']} launches, sd {s['sd']:.4f}, pair sd {s['pair_sd']:.4f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("launch-noise"))
    parser.add_argument("--analyse", type=Path, help="a saved raw.json: analyse it, run nothing")
    parser.add_argument("--looks", type=int, default=8, help="challenger launches")
    parser.add_argument("--slowdown", type=float, default=0.03)
    parser.add_argument("--model", default="random-qwen2")
    parser.add_argument("--concurrencies", default="16,64")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per block")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warmup-requests", type=int, default=8)
    parser.add_argument("--shape-launches", type=int, default=0)
    parser.add_argument("--shape-prompts", type=int, default=16)
    parser.add_argument(
        "--history",
        type=Path,
        nargs="*",
        default=[],
        help="raw.json files of earlier rounds on the same workload: their B pairs join",
    )
    parser.add_argument("--sigma-floor", default="0.005,0.02", help="floors to decide with")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--startup-deadline-s", type=float, default=600)
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("server_args", nargs="*", help="after `--`: more gpu_server.py arguments")
    args = parser.parse_args()
    floors = [float(f) for f in args.sigma_floor.split(",")]
    if args.analyse:
        raw = json.loads(args.analyse.read_text())
    else:
        concurrencies = tuple(int(c) for c in args.concurrencies.split(","))
        workload = Workload(
            concurrencies=concurrencies,
            max_tokens=args.max_tokens,
            prompts_per_block=args.prompts,
            blocks_per_level=args.blocks,
            warmup_requests=args.warmup_requests,
        )
        rounds = [run_round(args, "effect", layout(args.looks), workload)]
        if args.shape_launches:
            shape = workload.model_copy(
                update={"level_prompts": (args.shape_prompts,) * len(concurrencies)}
            )
            rounds.append(run_round(args, "shape", ("B",) * args.shape_launches, shape))
        config = {"slowdown": args.slowdown, "looks": args.looks, "server_args": args.server_args}
        raw = {"config": config, "rounds": rounds}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "raw.json").write_text(json.dumps(raw))
    history = [
        p
        for path in args.history
        for r in json.loads(path.read_text())["rounds"]
        for p in baseline_pairs(r["launches"])
    ]
    result = analyse(raw, floors, history)
    text = render(result)
    print(text)
    if not args.analyse:
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
        (args.out / "result.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
