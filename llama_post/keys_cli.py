"""`llama-post keys`: the API keys of a distribution (its storage_dir holds them, hashed)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llama_post.auth import KeyStore
from llama_post.errors import LlamaPostError

keys = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
out = Console()
err = Console(stderr=True)
Config = Annotated[Path, typer.Argument(help="The distribution whose keys these are.")]


def _store(config: Path) -> KeyStore:
    from llama_post.distribution.config import load_run_config

    try:
        run, _ = load_run_config(config)
    except LlamaPostError as exc:
        err.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    return KeyStore(run.storage_dir)


@keys.command()
def create(
    owner: Annotated[str, typer.Option(help="Who the key's resources belong to.")],
    config: Config = Path("run.yaml"),
    admin: Annotated[bool, typer.Option(help="The key sees every owner's resources.")] = False,
) -> None:
    """Make a key; it is printed once and only its hash is kept."""
    store = _store(config)
    try:
        key_id, key = store.create(owner, admin)
    except LlamaPostError as exc:
        err.print(f"[red]error:[/] {exc.message}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    finally:
        store.close()
    err.print(f"key {key_id} for {owner}{' (admin)' if admin else ''}; it is not shown again:")
    print(key)


@keys.command("list")
def list_keys(config: Config = Path("run.yaml")) -> None:
    """The keys, with their owners; never the keys themselves."""
    store = _store(config)
    try:
        rows = store.list()
    finally:
        store.close()
    table = Table("key id", "owner", "admin", "created", "revoked")
    for row in rows:
        table.add_row(
            row["key_id"],
            row["owner"],
            "yes" if row["admin"] else "",
            _when(row["created_at"]),
            _when(row["revoked_at"]),
        )
    out.print(table)


@keys.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`).")],
    config: Config = Path("run.yaml"),
) -> None:
    """Revoke a key: requests carrying it get 401 from then on."""
    store = _store(config)
    try:
        done = store.revoke(key_id)
    finally:
        store.close()
    if not done:
        err.print(f"[red]error:[/] no active key {key_id!r}", markup=True, highlight=False)
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


def _when(stamp: int | None) -> str:
    if stamp is None:
        return ""
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
