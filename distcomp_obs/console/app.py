"""The console's web application (Starlette): server-rendered pages whose live part a small script
refreshes every 2 s from `/fragments/PAGE` (JSON holding HTML), the JSON API under `/api/`, the
login form. Handlers are plain functions: Starlette runs them in its thread pool, so a Redis round
trip never blocks the event loop.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distcomp_obs.console import actions, auth, reads
from distcomp_obs.console.sampler import Throughput, sparkline
from distcomp_obs.queue import Queue, views

HERE = Path(__file__).resolve().parent
#: at most this many ids in one bulk action
BULK_IDS = 10_000
SAFE_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")  # fmt: skip


@dataclass
class Console:
    q: Queue
    token: str | None
    root_path: str = ""
    throughput: Throughput | None = None


def _fmt_time(seconds: float | None) -> str:
    return "" if not seconds else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _fmt_ms(ms: Any) -> str:
    return _fmt_time(float(ms) / 1000) if isinstance(ms, int | float) else ""


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["time"] = _fmt_time
    env.filters["ms_time"] = _fmt_ms
    env.globals["WORDS"] = reads.WORDS
    env.globals["STATES"] = reads.STATES
    return env


class Edge:
    """Behind a reverse proxy that does not strip `--root-path`, strip it here; add the security
    headers (a strict CSP: the pages run only console.js) to every answer."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app, self.root_path = app, root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.root_path and (path + "/").startswith(self.root_path + "/"):
            scope = {**scope, "path": path[len(self.root_path) :] or "/"}
        dynamic = scope["path"].startswith(("/api/", "/fragments/"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("X-Frame-Options", "DENY")
                if dynamic:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def base_of(request: Request, console: Console) -> str:
    """Where the console's pages are, as the browser sees them: X-Forwarded-Prefix, else --root-path."""
    forwarded = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    return forwarded if forwarded and SAFE_PREFIX.match(forwarded) else console.root_path


def _state(request: Request) -> str:
    state = request.query_params.get("state", "todo")
    if state not in reads.STATES:
        raise HTTPException(404, f"no such state {state!r} (one of {', '.join(reads.STATES)})")
    return state


def _cursor(request: Request) -> str:
    cursor = request.query_params.get("cursor", "0") or "0"
    if not cursor.isdigit():
        raise HTTPException(400, "cursor must be the number a previous page gave")
    return cursor


def _task_id(request: Request) -> int:
    try:
        return int(request.path_params["task_id"])
    except (KeyError, ValueError):
        raise HTTPException(404, "no such task") from None


def _job(q: Queue, name: str) -> str:
    """A `job` filter: "" for none; a job never submitted to is a 404."""
    if name and views.job(q, name) is None:
        raise HTTPException(404, f"no job {name!r}")
    return name


def _job_name(request: Request) -> str:
    name = str(request.path_params.get("name", ""))
    if not name:
        raise HTTPException(404, "no such job")
    return name


def build_app(console: Console) -> Starlette:  # noqa: C901 - one closure per route, flat
    env = _env()
    q = console.q

    def page(name: str, request: Request, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
        base = base_of(request, console)
        full = {**ctx, "base": base, "can_act": console.token is not None, "page": name,
                "logged_in": console.token is not None and auth.authorised(request, console.token)}  # fmt: skip
        return HTMLResponse(env.get_template(f"{name}.html").render(full), status_code=status)

    def fragments(name: str, request: Request, ctx: dict[str, Any]) -> JSONResponse:
        base = base_of(request, console)
        full = {**ctx, "base": base, "can_act": console.token is not None}
        return JSONResponse({"fragments": {"live": env.get_template(f"_{name}.html").render(full)}})

    # --- contexts: one per page, shared by the page, its fragment and its API --------------------
    def overview_ctx(request: Request) -> dict[str, Any]:
        data = reads.overview(q)
        rates = console.throughput.rates() if console.throughput else []
        return {**data, "spark": sparkline(rates), "rates": rates}

    def tasks_ctx(request: Request) -> dict[str, Any]:
        state, text, cursor = _state(request), request.query_params.get("q", ""), _cursor(request)
        job = _job(q, request.query_params.get("job", ""))
        got = reads.page_tasks(q, state, text, cursor, job=job)
        where = {"state": state, "q": text, **({"job": job} if job else {})}
        nxt = None if got.cursor is None else urlencode({**where, "cursor": got.cursor})
        return {"state": state, "text": text, "job": job, "cursor": cursor, "rows": got.rows, "next": got.cursor,
                "next_query": nxt, "counts": q.counts(), "query": urlencode({**where, "cursor": cursor}),
                "job_query": urlencode({"job": job}) if job else ""}  # fmt: skip

    def task_ctx(request: Request) -> dict[str, Any]:
        task_id = _task_id(request)
        view = views.task_view(q, str(task_id))
        if view is None:
            raise HTTPException(404, f"no task with id {task_id}")
        return {"task": view}

    def workers_ctx(request: Request) -> dict[str, Any]:
        workers = q.workers()
        return {"workers": workers, "live": sum(1 for w in workers.values() if w.get("live"))}

    def jobs_ctx(request: Request) -> dict[str, Any]:
        return {"jobs": reads.job_list(q)}

    def job_ctx(request: Request) -> dict[str, Any]:
        name = _job_name(request)
        job = reads.job_detail(q, name)
        if job is None:
            raise HTTPException(404, f"no job {name!r}")
        return {"job": job, "query": urlencode({"name": name})}

    contexts: dict[str, Callable[[Request], dict[str, Any]]] = {
        "overview": overview_ctx, "tasks": tasks_ctx, "task": task_ctx, "workers": workers_ctx, "jobs": jobs_ctx,
        "job": job_ctx}  # fmt: skip

    def html(name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return page(name, request, contexts[name](request))

        return endpoint

    def fragment(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in contexts:
            raise HTTPException(404, "no such page")
        if name == "task":
            request.path_params["task_id"] = request.query_params.get("id", "")
        if name == "job":
            request.path_params["name"] = request.query_params.get("name", "")
        return fragments(name, request, contexts[name](request))

    # --- JSON API ---------------------------------------------------------------------------
    def api_overview(request: Request) -> Response:
        ctx = overview_ctx(request)
        ctx.pop("spark")
        return JSONResponse({**ctx, "words": reads.WORDS, "throughput_per_s": ctx.pop("rates")})

    def api_tasks(request: Request) -> Response:
        ctx = tasks_ctx(request)
        return JSONResponse({"state": ctx["state"], "q": ctx["text"], "job": ctx["job"] or None,
                             "tasks": [r.json() for r in ctx["rows"]], "cursor": ctx["next"]})  # fmt: skip

    def api_task(request: Request) -> Response:
        return JSONResponse(task_ctx(request)["task"].as_json())

    def api_workers(request: Request) -> Response:
        return JSONResponse(q.workers())

    def api_jobs(request: Request) -> Response:
        return JSONResponse(reads.job_list(q))

    def api_job(request: Request) -> Response:
        job = dict(job_ctx(request)["job"])
        job["failures"] = {row.line: row.detail for row in job["failures"]}
        return JSONResponse(job)

    def act(run: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            why = auth.refusal(request, console.token)
            if why is not None:
                return JSONResponse({"error": why}, status_code=403)
            try:
                return JSONResponse(run(request))
            except actions.ActionError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)

        return endpoint

    def one_task(request: Request) -> str:
        line = q.task_line(str(_task_id(request)))
        if line is None:
            raise actions.ActionError(404, "no such task")
        return line

    def with_url(request: Request, out: dict[str, Any]) -> dict[str, Any]:
        if out.get("id") is not None and "retried" in out:
            out["url"] = f"{base_of(request, console)}/tasks/{out['id']}"
        return out

    def bulk_selection(params: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """The tasks a bulk action names: `ids` (a list), or `state` with optional `q` and `job`.
        Returns their lines and the ids that name no task."""
        ids = params.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or len(ids) > BULK_IDS:
                raise HTTPException(400, f"ids must be a list of at most {BULK_IDS} task ids")
            found = q.task_lines([str(i) for i in ids if str(i).isdigit()])
            unknown = [i for i in ids if str(i) not in found]
            return list(dict.fromkeys(found.values())), unknown
        state = params.get("state")
        if not state:
            raise HTTPException(400, 'name the tasks: {"ids": [...]} or state=STATE (with q=TEXT, job=NAME)')
        if state not in reads.STATES:
            raise HTTPException(404, f"no such state {state!r} (one of {', '.join(reads.STATES)})")
        job = _job(q, str(params.get("job") or ""))
        return reads.select_all(q, state, str(params.get("q") or ""), job), []

    def bulk(action: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            why = auth.refusal(request, console.token)
            if why is not None:
                return JSONResponse({"error": why}, status_code=403)
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise HTTPException(400, "the body must be a JSON object")
            lines, unknown = await run_in_threadpool(bulk_selection, {**request.query_params, **body})
            out = await run_in_threadpool(actions.bulk, q, action, lines)
            return JSONResponse({**out, "unknown_ids": unknown})

        return endpoint

    # --- login ------------------------------------------------------------------------------
    def login_form(request: Request) -> Response:
        return page("login", request, {"error": ""})

    async def login(request: Request) -> Response:
        base = base_of(request, console)
        if console.token is None:
            return page("login", request, {"error": "this console is read-only: there is no token"}, 403)
        if not auth.same_origin(request):
            return page("login", request, {"error": "cross-origin request refused"}, 403)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), console.token.encode()):
            return page("login", request, {"error": "wrong token"}, 403)
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(auth.COOKIE, auth.session_value(console.token), httponly=True, samesite="strict",
                            secure=auth.secure(request), path=f"{base}/")  # fmt: skip
        return response

    def logout(request: Request) -> Response:
        if not auth.same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        base = base_of(request, console)
        response = RedirectResponse(f"{base}/", status_code=303)
        response.delete_cookie(auth.COOKIE, path=f"{base}/")
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.url.path.startswith("/api/") or request.url.path.startswith("/fragments/"):
            return JSONResponse({"error": detail}, status_code=status)
        return page("error", request, {"status": status, "message": detail}, status)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if console.throughput:
            console.throughput.start()
        yield
        if console.throughput:
            console.throughput.stop()

    retry_one = act(lambda r: with_url(r, actions.retry(q, one_task(r))))
    cancel_one = act(lambda r: actions.cancel(q, one_task(r)))
    cancel_job = act(lambda r: actions.cancel_job(q, _job_name(r)))
    retry_job = act(lambda r: actions.retry_failed_job(q, _job_name(r)))
    routes = [
        Route("/", html("overview")),
        Route("/tasks", html("tasks")),
        Route("/tasks/{task_id}", html("task")),
        Route("/workers", html("workers")),
        Route("/jobs", html("jobs")),
        Route("/jobs/{name}", html("job")),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/fragments/{name}", fragment),
        Route("/api/overview", api_overview),
        Route("/api/tasks", api_tasks),
        Route("/api/tasks/retry", bulk("retry"), methods=["POST"]),
        Route("/api/tasks/cancel", bulk("cancel"), methods=["POST"]),
        Route("/api/tasks/delete", bulk("delete"), methods=["POST"]),
        Route("/api/tasks/{task_id}", api_task),
        Route("/api/workers", api_workers),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{name}", api_job),
        Route("/api/jobs/{name}/cancel", cancel_job, methods=["POST"]),
        Route("/api/jobs/{name}/retry-failed", retry_job, methods=["POST"]),
        Route("/api/tasks/{task_id}/cancel", cancel_one, methods=["POST"]),
        Route("/api/tasks/{task_id}/retry", retry_one, methods=["POST"]),
        Route("/api/tasks/{task_id}/delete", act(lambda r: actions.delete(q, one_task(r))), methods=["POST"]),
        Route("/api/retry-failed", act(lambda r: actions.retry_failed(q)), methods=["POST"]),
        Route("/api/purge-finished", act(lambda r: actions.purge_finished(q)), methods=["POST"]),
        Route("/healthz", lambda r: JSONResponse({"ok": True})),
        Route("/livez", lambda r: JSONResponse({"ok": True})),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found, 500: not_found})

    return app


def asgi(console: Console) -> ASGIApp:
    return Edge(build_app(console), console.root_path)
