"""The CLI's consoles and its one way to fail: a clear message on stderr and a non-zero exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "fail"]

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error and exit non-zero (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # [..] in a message is text
    raise typer.Exit(code)
