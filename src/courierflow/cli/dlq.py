"""`courierflow dlq list` and `replay`: dead-lettered orders, for the operator."""

from __future__ import annotations

from typing import Annotated

import typer

from courierflow.aws.cli import Output, OutputOpt
from courierflow.cli import render
from courierflow.config import Settings
from courierflow.dead_letters import list_dead_letters, replay_dead_letters
from courierflow.local.stack import settings_for

app = typer.Typer(help="Dead-lettered orders: look at them, put them back after a fix.")


@app.command("list")
def dlq_list(output: OutputOpt = Output.TABLE) -> None:
    """Dead-lettered orders with their reason and attempt count."""
    base = Settings.from_env()
    settings = settings_for(base.home, base)
    render.dead_letters(settings.queue, list_dead_letters(settings), output)


@app.command("replay")
def dlq_replay(
    order: Annotated[str | None, typer.Option(help="Only this order id.")] = None,
) -> None:
    """Put dead-lettered orders back on the queue (after fixing the cause)."""
    base = Settings.from_env()
    moved = replay_dead_letters(settings_for(base.home, base), order)
    render.say(f"replayed {moved} message(s)")
