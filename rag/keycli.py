"""`pagerag keys`: scoped API keys in the keys file (rag/keys.py). The file is the source: a
running server re-reads it, so no command here goes through the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rag.config import InvalidSettingsError, Settings
from rag.errors import UserError
from rag.keys import ALL_LIBRARIES, ENV_NAME, Role, add_key, keys_path, list_keys, remove_key

keys_app = typer.Typer(
    help="Scoped API keys: a role (read, write, admin) in some libraries or all. Stored as "
    "hashes in PAGERAG_KEYS_FILE (default PAGERAG_DATA_DIR/keys.json); a running server picks "
    "up changes at once. PAGERAG_API_KEYS keys stay admin keys for every library.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)


def _die(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _note(message: str) -> None:
    err.print(f"[cyan]notice:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        return Settings()
    except InvalidSettingsError as exc:
        _die(str(exc), exc.exit_code)


def _path() -> tuple[Path, Settings]:
    settings = _settings()
    return keys_path(settings), settings


def _libs(libraries: tuple[str, ...]) -> str:
    return "every library" if ALL_LIBRARIES in libraries else ", ".join(libraries)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            help="read: search, ask, pages, lists; write: also upload, delete, edit; "
            "admin: also libraries and keys.",
        ),
    ] = "read",
    library: Annotated[
        list[str] | None,
        typer.Option(
            "--library",
            "-l",
            metavar="NAME",
            help="A library the key may use (repeatable); default: every library.",
        ),
    ] = None,
) -> None:
    """Create a key and print it on stdout, once: only its hash is stored."""
    path, _ = _path()
    try:
        key = add_key(path, name, role, library or ())
    except UserError as exc:
        _die(str(exc), exc.exit_code)
    typer.echo(key)
    scope = _libs(tuple(library or (ALL_LIBRARIES,)))
    _note(
        f"key {name!r} ({role}, {scope}) added to {path}; this is the only time it is shown, "
        "store it now"
    )


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """The keys in the keys file: name, role, libraries, creation time (never the keys)."""
    path, settings = _path()
    try:
        keys = list_keys(path)
    except UserError as exc:
        _die(str(exc), exc.exit_code)
    if as_json:
        typer.echo(json.dumps([k.as_json() for k in keys], indent=2))
        return
    if not keys:
        out.print(
            f"no keys in {escape(str(path))}; add one with `pagerag keys add NAME --role read`"
        )
    else:
        table = Table()
        for column in ("name", "role", "libraries", "created_at"):
            table.add_column(column, overflow="fold")
        for k in keys:
            table.add_row(escape(k.name), k.role, _libs(k.libraries), k.created_at)
        out.print(table)
    if n := len(settings.api_key_list):
        out.print(f"and {n} {ENV_NAME} key{'s' if n > 1 else ''} (admin, every library)")


@keys_app.command("remove")
def keys_remove(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Delete a key; a running server refuses it from its next request."""
    path, settings = _path()
    try:
        remove_key(path, name)
        left = list_keys(path)
    except UserError as exc:
        _die(str(exc), exc.exit_code)
    out.print(f"removed key {escape(repr(name))} from {escape(str(path))}", highlight=False)
    if not left and not settings.api_key_list:
        _note(
            f"no keys left: a server refuses every API call until you add one, or delete {path} "
            "to run it without keys"
        )
