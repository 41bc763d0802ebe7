"""The pages of `/ui`, each one API read (or a few) rendered by a template.

A page calls the API methods through the route table (`ApiProxy`), as the request's caller, so
it sees what that caller's key sees; an id that names nothing (or another owner's thing) is the
friendly 404 page. What a page shows live (a job's curves and log, the chat) its script reads
from the JSON API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from llama_post.auth import COOKIE, PRINCIPAL, KeyStore
from llama_post.errors import LlamaPostError, NotFoundError
from llama_post.library_client import ApiProxy
from llama_post.routes import Dispatcher

log = logging.getLogger("llama_post.ui")
HERE = Path(__file__).parent
ROWS_PER_PAGE = 50
TERMINAL = {"completed", "failed", "cancelled"}
# Scripts, styles, images and connections: this server only. uPlot sizes its canvas through
# inline `style` attributes, hence 'unsafe-inline' for styles (never for scripts).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)

Page = Callable[[Request], Awaitable[Response]]


def ui_routes(stack: Dispatcher, keys: KeyStore | None = None) -> list[BaseRoute]:
    """The routes of `/ui` over `stack`; `keys` when the server asks for API keys."""
    pages = Pages(stack, keys)
    return [
        Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static"),
        Route("/ui", pages.page(pages.jobs)),
        Route("/ui/jobs-table", pages.page(pages.jobs_table)),
        Route("/ui/jobs/{job_uuid}", pages.page(pages.job)),
        Route("/ui/models", pages.page(pages.models)),
        Route("/ui/models/{model_id:path}", pages.page(pages.model)),
        Route("/ui/datasets", pages.page(pages.datasets)),
        Route("/ui/datasets/{dataset_id}", pages.page(pages.dataset)),
        Route("/ui/login", pages.page(pages.login), methods=["GET", "POST"]),
        Route("/ui/logout", pages.logout, methods=["POST"]),
        Route("/ui/{rest:path}", pages.page(pages.nowhere)),
    ]


class Pages:
    def __init__(self, stack: Dispatcher, keys: KeyStore | None) -> None:
        self.keys = keys
        served = {r.api for r in stack.routes}
        self.apis = {api: ApiProxy(stack, api) for api in served}
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.filters["when"] = _when
        self.templates.env.filters["duration"] = _duration
        self.templates.env.filters["size"] = _size

    def api(self, name: str) -> ApiProxy:
        proxy = self.apis.get(name)
        if proxy is None:
            raise NotFoundError(f"this distribution serves no {name.replace('_', '-')} API")
        return proxy

    def render(self, request: Request, name: str, code: int = 200, **context: Any) -> Response:
        principal = PRINCIPAL.get()
        context |= {
            "auth": self.keys is not None,
            "owner": principal.owner if principal else None,
            "apis": set(self.apis),
        }
        response = self.templates.TemplateResponse(request, name, context, status_code=code)
        response.headers["content-security-policy"] = CSP
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-store"
        return response

    def page(self, handler: Page) -> Page:
        """`handler`, with the API's errors shown as pages: a 404 for what does not exist."""

        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except LlamaPostError as exc:
                name = "not_found.html" if exc.status == 404 else "error.html"
                return self.render(request, name, exc.status, message=exc.message)
            except Exception:
                log.exception("page %s failed", request.url.path)
                message = "internal error; the server log has the details"
                return self.render(request, "error.html", 500, message=message)

        return endpoint

    # -- jobs ------------------------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        return self.render(request, "jobs.html", jobs=await self._jobs())

    async def jobs_table(self, request: Request) -> Response:
        """The jobs table alone: the list page reloads it every few seconds."""
        return self.render(request, "jobs_table.html", jobs=await self._jobs())

    async def _jobs(self) -> list[dict[str, Any]]:
        post_training = self.api("post_training")
        listed = await post_training.list_jobs()
        rows = []
        for job in listed.data:
            try:
                status = await post_training.get_job_status(job.job_uuid)
            except NotFoundError:  # removed between the two reads
                continue
            rows.append(_job_row(status))
        return sorted(rows, key=lambda r: r["scheduled_at"] or 0, reverse=True)

    async def job(self, request: Request) -> Response:
        job_uuid = request.path_params["job_uuid"]
        status = await self.api("post_training").get_job_status(job_uuid)
        logs = await self.api("post_training").get_job_logs(job_uuid)
        evaluations = []
        if "evaluations" in self.apis:  # those the job's `evaluations` started, by step
            listed = await self.api("evaluations").list_evaluations(job_uuid=job_uuid)
            evaluations = sorted(listed.data, key=lambda e: e.request.metadata.get("target", ""))
        return self.render(
            request,
            "job.html",
            job=_job_row(status),
            status=status,
            request_json=_json(status.request),
            log_lines=logs.lines[-300:],
            evaluations=evaluations,
            evaluation_chart=_evaluation_chart(status, evaluations),
        )

    # -- models ----------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        listed = await self.api("models").list_models()
        return self.render(request, "models.html", models=listed.data)

    async def model(self, request: Request) -> Response:
        model = await self.api("models").get_model(request.path_params["model_id"])
        return self.render(request, "model.html", model=model, model_json=_json(model))

    # -- datasets --------------------------------------------------------------------------

    async def datasets(self, request: Request) -> Response:
        listed = await self.api("datasets").list_datasets()
        return self.render(request, "datasets.html", datasets=listed.data)

    async def dataset(self, request: Request) -> Response:
        dataset_id = request.path_params["dataset_id"]
        datasets = self.api("datasets")
        dataset = await datasets.get_dataset(dataset_id)
        start = _int(request.query_params.get("start"), 0)
        page = await datasets.iterrows(dataset_id, start_index=start, limit=ROWS_PER_PAGE)
        columns: list[str] = []
        for row in page.data:
            columns += [c for c in row if c not in columns]
        preflight, preflight_error, models = None, None, []
        chosen = request.query_params.get("model")
        if "post_training" in self.apis and "models" in self.apis:
            listed = await self.api("models").list_models()
            models = [m.id for m in listed.data if m.kind == "base"]
            if chosen:
                try:
                    preflight = await self.api("post_training").preflight(
                        model=chosen,
                        training_config={
                            "n_epochs": 1,
                            "data_config": {"dataset_id": dataset_id, "batch_size": 1},
                        },
                    )
                except LlamaPostError as exc:  # the report's own failure, shown on the page
                    preflight_error = exc.message
        return self.render(
            request,
            "dataset.html",
            dataset=dataset,
            rows=page.data,
            columns=columns,
            start=start,
            next_start=page.next_start_index if page.has_more else None,
            previous_start=max(0, start - ROWS_PER_PAGE) if start > 0 else None,
            models=models,
            chosen=chosen,
            preflight=preflight,
            preflight_error=preflight_error,
        )

    # -- keys ------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """A form for an API key, kept in an HttpOnly cookie the pages and their scripts send."""
        target = _local(request.query_params.get("next"))
        if self.keys is None:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self.render(request, "login.html", target=target)
        form = await _small_form(request)
        if form is None:
            message = f"the form is over its {LOGIN_FORM_BYTES}-byte limit"
            return self.render(request, "login.html", 413, target=target, message=message)
        key = form.get("key", [""])[0].strip()
        try:
            self.keys.verify(key)
        except LlamaPostError as exc:
            return self.render(request, "login.html", 401, target=target, message=exc.message)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def nowhere(self, request: Request) -> Response:
        raise NotFoundError(f"there is no page {request.url.path}")


LOGIN_FORM_BYTES = 16 << 10  # a key, and room to spare


async def _small_form(request: Request) -> dict[str, list[str]] | None:
    """The urlencoded form the login page posts; None once it is over LOGIN_FORM_BYTES, read
    no further than that (a chunked body declares no length)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > LOGIN_FORM_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_FORM_BYTES:
            return None
    try:
        return parse_qs(body.decode("latin-1"), max_num_fields=4)
    except ValueError:  # more fields than the form has: no key read from it
        return {}


def _job_row(status: Any) -> dict[str, Any]:
    """What the jobs table shows of a job's status."""
    progress = status.progress
    eta = None
    if status.status == "in_progress" and status.started_at and progress.step > 0:
        elapsed = time.time() - status.started_at
        eta = elapsed / progress.step * max(0, progress.total_steps - progress.step)
    total = progress.total_steps or 0
    return {
        "job_uuid": status.job_uuid,
        "status": status.status.value,
        "method": status.method,
        "algorithm": status.algorithm,
        "model": status.model,
        "step": progress.step,
        "total_steps": total,
        "percent": round(100 * progress.step / total) if total else 0,
        "eta": eta,
        "attempts": len(status.attempts),
        "scheduled_at": status.scheduled_at,
        "fine_tuned_model": status.fine_tuned_model,
        "error": status.error,
        "terminal": status.status.value in TERMINAL,
    }


def _evaluation_chart(status: Any, evaluations: list[Any]) -> dict[str, Any]:
    """The job's evaluations as chart series beside its loss: each benchmark's grader mean at
    the step of the checkpoint it scored (the fine-tuned model's at the job's last step), only
    those with every row graded: `{"series": [...], "points": {step: {series: mean}}}`."""
    steps = {c.identifier: c.step for c in status.checkpoints}
    steps[f"{status.job_uuid}/end"] = status.progress.step
    series: list[str] = []
    points: dict[int, dict[str, float]] = {}
    for e in evaluations:
        step = steps.get(e.request.metadata.get("target", ""))
        if step is None or e.status != "completed":
            continue
        for grader, metric in e.metrics.items():
            name = f"{e.benchmark_id} {grader}"
            if name not in series:
                series.append(name)
            points.setdefault(step, {})[name] = metric.mean
    return {"series": series, "points": points}


def _json(model: BaseModel | None) -> Any:
    return model.model_dump(mode="json") if model is not None else None


def _int(text: str | None, default: int) -> int:
    return int(text) if text and text.isdigit() else default


def _local(target: str | None) -> str:
    """Where to go after logging in: a page of this UI, never another site."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return quote(target, safe="/?=&-_.~%")
    return "/ui"


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
