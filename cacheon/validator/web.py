"""The validator's status server: /healthz, /metrics, /api/* and the leaderboard page.

It runs inside the daemon's event loop and only reads (GET and HEAD; anything else is 405), so a
page view can never change what the validator decides. It binds 127.0.0.1 by default: an
operator who wants it public puts a proxy in front. The server is not essential to the
validator's job, so a port that cannot be bound is logged and the loop carries on without it.

Endpoints:
    /healthz                 200 when the loop is alive and the chain answers, else 503 (JSON)
    /metrics                 Prometheus text format, from this daemon's own registry
    /api/status              the public report plus the operator's view (pods, weights, loop)
    /api/standings           leader, runner-up and pending with their bounds, and their history
    /api/rounds?limit=N      recent rounds, newest first
    /api/rounds/{round_id}   one round's raw evidence and its verdicts
    /api/submissions/{hotkey} one hotkey's commitments, evidence and verdicts
    /                        the leaderboard page (the same page published to S3)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from cacheon.log import get_logger
from cacheon.validator import views
from cacheon.validator.health import check
from cacheon.validator.leaderboard import render_leaderboard
from cacheon.validator.leaderboard_assets import CONTENT_SECURITY_POLICY
from cacheon.validator.metrics import Snapshot, registry
from cacheon.validator.view import DaemonView

log = get_logger("cacheon.validator.web")

MAX_ROUNDS = 500
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(daemon: DaemonView) -> web.Application:
    """The read-only application over one daemon."""
    own_registry, collector = registry()

    async def healthz(_request: web.Request) -> web.Response:
        health = await check(daemon)
        return _json(health, status=200 if health.ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        collector.snapshot = await Snapshot.take(daemon)
        body = generate_latest(own_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(_request: web.Request) -> web.Response:
        return _json(views.status(daemon))

    async def standings(_request: web.Request) -> web.Response:
        return _json(views.standings(daemon))

    async def rounds(request: web.Request) -> web.Response:
        raw = request.query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_ROUNDS:
            return _error(400, f"limit must be an integer from 1 to {MAX_ROUNDS}")
        summaries = views.rounds(daemon, int(raw))
        return web.json_response(text="[" + ",".join(s.model_dump_json() for s in summaries) + "]")

    async def round_detail(request: web.Request) -> web.Response:
        round_id = request.match_info["round_id"]
        found = views.round_view(daemon, round_id)
        if found is None:
            return _error(404, f"no round {round_id!r}")
        return _json(found)

    async def submissions(request: web.Request) -> web.Response:
        hotkey = request.match_info["hotkey"]
        found = views.submissions(daemon, hotkey)
        if found is None:
            return _error(404, f"no submission from hotkey {hotkey!r}")
        return _json(found)

    async def page(_request: web.Request) -> web.Response:
        html = render_leaderboard(views.public_report(daemon), views.next_round(daemon))
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-store",
            },
        )

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/standings", standings)
    app.router.add_get("/api/rounds", rounds)
    app.router.add_get("/api/rounds/{round_id}", round_detail)
    app.router.add_get("/api/submissions/{hotkey}", submissions)
    app.router.add_get("/", page)
    return app


class WebServer:
    """Starts and stops the status server of one daemon on `settings.web` (port 0: any free)."""

    def __init__(self, daemon: DaemonView) -> None:
        self._daemon = daemon
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        return f"http://{self._daemon.settings.web.host}:{self.port}"

    async def start(self) -> None:
        settings = self._daemon.settings.web
        runner = web.AppRunner(build_app(self._daemon), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            log.error(
                "status server not started; the validator runs on without it",
                host=settings.host,
                port=settings.port,
                reason=exc.strerror or str(exc),
            )
            return
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("status server listening", url=self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self.port = None
        if runner is not None:
            await runner.cleanup()


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failing read answers 500 with a JSON reason and is logged; the daemon is unaffected."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # a broken view must not take the server down
        log.exception("status request failed", path=request.path, reason=str(exc))
        return _error(500, f"internal error: {type(exc).__name__}")


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
