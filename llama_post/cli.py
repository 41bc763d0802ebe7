"""The `llama-post` command."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, cast, get_args

import click
import typer
from rich.console import Console

from llama_post.errors import ConfigError
from llama_post.jobs_cli import jobs
from llama_post.keys_cli import keys
from llama_post.logs import LogFormat

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Self-hosted post-training behind typed APIs."
)
err = Console(stderr=True)
app.add_typer(jobs, name="jobs")
app.add_typer(keys, name="keys")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The distribution to serve.")] = Path("run.yaml"),
    host: Annotated[str | None, typer.Option(help="Overrides server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides server.port.")] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            click_type=click.Choice(get_args(LogFormat)),
            envvar="LLAMA_POST_LOG_FORMAT",
            help="text, or json (a JSON object a line, one line per request). Overrides "
            "server.log_format.",
        ),
    ] = None,
) -> None:
    """Serve a distribution over HTTP until SIGINT or SIGTERM."""
    from llama_post import logs
    from llama_post.server import serve

    chosen = cast(LogFormat | None, log_format)
    logs.configure(chosen or "text")  # until run.yaml is read
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; end with 0 then.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        asyncio.run(serve(config, host=host, port=port, log_format=chosen))
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def openapi(
    output_dir: Annotated[Path, typer.Option(help="Where to write the spec and its HTML.")] = Path(
        "docs/openapi"
    ),
    check: Annotated[bool, typer.Option(help="Fail if the files there are out of date.")] = False,
) -> None:
    """Write the OpenAPI spec (YAML) and its HTML reference."""
    from llama_post.openapi import writer

    if check:
        stale = [
            name
            for name, text in writer.generated_files().items()
            if not (output_dir / name).is_file()
            or (output_dir / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            err.print(f"out of date: {', '.join(stale)}; run `llama-post openapi`")
            raise typer.Exit(1)
        return
    for path in writer.write(output_dir):
        print(path)
