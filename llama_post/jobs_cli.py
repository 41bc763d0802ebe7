"""`llama-post jobs ...`: post-training jobs on a running server."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

jobs = typer.Typer(no_args_is_help=True, help="Post-training jobs on a running server.")
out = Console()
URL = Annotated[str, typer.Option("--url", envvar="LLAMA_POST_URL", help="The server.")]
DEFAULT_URL = "http://127.0.0.1:8321"


def _get(url: str, path: str) -> Any:
    try:
        response = httpx.get(f"{url}{path}", timeout=30)
    except httpx.TransportError as exc:
        raise typer.BadParameter(f"cannot reach {url}: {exc}") from None
    return _body(response)


def _body(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        message = response.json().get("error", {}).get("message", response.text)
        out.print(f"[red]error {response.status_code}:[/] {message}")
        raise typer.Exit(1)
    return response.json()


@jobs.command("list")
def list_jobs(url: URL = DEFAULT_URL) -> None:
    """Every job with its status and progress."""
    table = Table("job", "status", "model", "step", "fine-tuned model")
    for job in _get(url, "/v1/post-training/jobs")["data"]:
        s = _get(url, f"/v1/post-training/jobs/{job['job_uuid']}")
        progress = s["progress"]
        table.add_row(
            s["job_uuid"],
            s["status"],
            s["model"],
            f"{progress['step']}/{progress['total_steps']}",
            s["fine_tuned_model"] or "",
        )
    out.print(table)


@jobs.command()
def status(job: str, url: URL = DEFAULT_URL) -> None:
    """One job's full status, as JSON."""
    out.print_json(json.dumps(_get(url, f"/v1/post-training/jobs/{job}")))


@jobs.command()
def logs(job: str, url: URL = DEFAULT_URL) -> None:
    """One job's log."""
    for line in _get(url, f"/v1/post-training/jobs/{job}/logs")["lines"]:
        out.print(line, markup=False, highlight=False)


@jobs.command()
def cancel(job: str, url: URL = DEFAULT_URL) -> None:
    """Cancel a job."""
    s = _body(httpx.post(f"{url}/v1/post-training/jobs/{job}/cancel", timeout=60))
    out.print(f"{job}: {s['status']}")


@jobs.command()
def watch(job: str, url: URL = DEFAULT_URL) -> None:
    """Follow a job with a live progress bar until it ends; print its model id."""
    first = _get(url, f"/v1/post-training/jobs/{job}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    final: dict[str, Any] = first
    with Progress(*columns, console=out) as progress:
        task = progress.add_task(
            job,
            total=first["progress"]["total_steps"] or None,
            completed=first["progress"]["step"],
            info="",
        )
        with httpx.stream(
            "GET", f"{url}/v1/post-training/jobs/{job}/events", timeout=None
        ) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[len("data: ") :])
                if event["type"] == "metrics":
                    m = event["metrics"]
                    info = f"loss {m['loss']:.4f}  {m['tokens_per_second']:.0f} tok/s"
                    if m.get("validation_loss") is not None:
                        info += f"  val {m['validation_loss']:.4f}"
                    total = _get(url, f"/v1/post-training/jobs/{job}")["progress"]["total_steps"]
                    progress.update(task, completed=m["step"], total=total, info=info)
                elif event["type"] == "status":
                    final = event["status"]
    out.print(f"{job}: {final['status']}")
    if final.get("error"):
        out.print(f"[red]{final['error']}[/]")
    if final.get("fine_tuned_model"):
        out.print(f"model: {final['fine_tuned_model']}")
    if final["status"] != "completed":
        raise typer.Exit(1)
