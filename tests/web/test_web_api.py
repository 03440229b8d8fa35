"""The status API over a running daemon on the devnet: every endpoint, read-only, no secrets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from cacheon.validator.rounds import plan_round
from tests.web.web_season import S3_SECRET, SECRET, Season, running, serving


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        text = await response.text()
        kind = response.headers.get("Content-Type", "")
        return response.status, json.loads(text) if "json" in kind else text


def test_every_endpoint_over_a_season(season: Season) -> None:
    keys = season.hotkeys
    bodies: list[str] = []

    async def scenario() -> None:
        async with running(season.daemon) as url, aiohttp.ClientSession() as http:
            assert url.startswith("http://127.0.0.1:")
            for path in ("/api/status", "/api/standings", "/api/rounds", "/api/rounds/r3", "/"):
                async with http.get(url + path) as response:
                    assert response.status == 200, path
                    bodies.append(await response.text())

            _, status = await get(http, url + "/api/status")
            report, ops = status["report"], status["operations"]
            assert report["leader"]["hotkey"] == keys["fast"]
            assert report["leader"]["ratio_low"] < report["leader"]["speed_ratio"]
            assert report["leader"]["speed_ratio"] < report["leader"]["ratio_high"]
            assert report["leader"]["launches"] == 3  # round 1, and both bookends of round 3
            close_call = {report["runner_up"]["hotkey"], report["pending"][0]["hotkey"]}
            assert close_call == {keys["close"], keys["rookie"]}
            reasons = {(v["hotkey"], v["outcome"], v["reason"]) for v in report["verdicts"]}
            assert {
                (keys["fast"], "PASS", "crowned"),
                (keys["steady"], "PASS", "not_faster"),
                (keys["sloppy"], "FAIL", "greedy_consistency"),
                (keys["copycat"], "FAIL", "copy_of"),
                (keys["typo"], "FAIL", "bad_commitment"),
                (keys["close"], "NO_DECISION", "pod_lost"),
            } <= reasons
            assert report["round"]["round_id"] == "r3"
            assert report["evaluation_version"] == season.daemon.version
            assert ops["loop_completed_at"] is not None
            assert ops["stopping"] is False
            last = ops["weights"]["last_success"]
            assert last["status"] == "set"
            runner_uid = report["runner_up"]["uid"]
            assert last["vector"] == pytest.approx({"2": 0.8, str(runner_uid): 0.2})
            assert ops["pods"] == {"running": [], "spent_today_usd": 0.0, "daily_budget_usd": 50.0}
            assert ops["next_round"]["in_progress"] is None
            assert ops["next_round"]["next_poll_at"] > ops["loop_completed_at"]

            _, standings = await get(http, url + "/api/standings")
            assert standings["leader"] == report["leader"]
            assert standings["launch_noise"] == 0.02
            history = standings["history"]
            assert [h["round_id"] for h in history] == ["r3", "r1"]
            assert history[-1]["changes"][0]["kind"] == "crowned"

            _, rounds = await get(http, url + "/api/rounds")
            assert [(r["round_id"], r["state"], r["reason"]) for r in rounds] == [
                ("r3", "scored", None),
                ("r2", "void", "pod_lost"),
                ("r1", "scored", None),
            ]
            assert rounds[0]["launches"] == 7
            status_code, one = await get(http, url + "/api/rounds?limit=1")
            assert status_code == 200
            assert len(one) == 1
            for bad in ("0", "abc", "501"):
                status_code, error = await get(http, url + f"/api/rounds?limit={bad}")
                assert status_code == 400
                assert "limit" in error["error"]

            _, r3 = await get(http, url + "/api/rounds/r3")
            assert r3["evidence"]["launch_order"] == ["B", "L", "C1", "C2", "C3", "L", "B"]
            assert r3["evidence"]["salt"] is not None  # revealed: the round is over
            assert {v["reason"] for v in r3["verdicts"]} == {"not_faster", "pending"}
            _, r2 = await get(http, url + "/api/rounds/r2")
            assert r2["summary"]["detail"] == "pod vanished"
            assert {v["outcome"] for v in r2["verdicts"]} == {"NO_DECISION"}
            status_code, missing = await get(http, url + "/api/rounds/r404")
            assert status_code == 404
            assert "r404" in missing["error"]

            _, sloppy = await get(http, url + f"/api/submissions/{keys['sloppy']}")
            (sub,) = sloppy["submissions"]
            assert sub["image"].startswith("docker.io/sloppy/server@sha256:")
            assert sub["verdicts"][0]["verdict"]["reason"] == "greedy_consistency"
            assert "greedy" in sub["verdicts"][0]["meaning"]
            _, fast = await get(http, url + f"/api/submissions/{keys['fast']}")
            (sub,) = fast["submissions"]
            assert sub["place"] == "leader"
            assert sub["call"] == "crowned"
            assert sub["vs_baseline"]["ratio"] == report["leader"]["speed_ratio"]
            _, close = await get(http, url + f"/api/submissions/{keys['close']}")
            (sub,) = close["submissions"]
            assert sub["call"] == "pending"
            assert sub["vs_opponent"]["launches"] == 1
            assert [v["verdict"]["reason"] for v in sub["verdicts"]] == ["pending", "pod_lost"]
            assert (
                "never the miner's" in sub["verdicts"][1]["meaning"]
                or "unless" in (sub["verdicts"][1]["meaning"])
            )
            status_code, _ = await get(http, url + "/api/submissions/5Nobody")
            assert status_code == 404

            for method in ("POST", "PUT", "DELETE"):
                async with http.request(method, url + "/api/status") as response:
                    assert response.status == 405

    asyncio.run(scenario())
    for body in bodies:
        assert SECRET not in body
        assert S3_SECRET not in body
        assert "X-Amz-Signature" not in body


def test_salt_stays_hidden_while_a_round_runs(season: Season) -> None:
    daemon = season.daemon
    record = daemon.state.submissions(current_only=True)[0]

    async def scenario() -> None:
        chain = await daemon.parts.chain.read_state()
        plan = plan_round(
            round_id="r4",
            block=chain.block,
            block_hash=chain.block_hash,
            secret=SECRET.encode(),
            settings=daemon.settings,
            workload=daemon.workload,
            gate=daemon.gate,
            leader=None,
            leader_image=None,
            challengers=[record],
        )
        daemon.state.begin_round(plan.record, [])
        async with serving(daemon) as url, aiohttp.ClientSession() as http:
            _, r4 = await get(http, url + "/api/rounds/r4")
            assert r4["evidence"]["state"] == "planned"
            assert r4["evidence"]["salt"] is None
            assert r4["evidence"]["salt_hash"] == plan.record.salt_hash
            _, status = await get(http, url + "/api/status")
            assert status["operations"]["next_round"]["in_progress"] == "r4"
            for path in ("/api/status", "/api/rounds", "/api/rounds/r4", "/"):
                _, body = await get(http, url + path)
                assert plan.record.salt not in json.dumps(body)

    asyncio.run(scenario())
