"""`courierflow lambda ...` commands (placeholder until the service lands)."""

import typer

app = typer.Typer(help="Run Lambda handlers locally behind the real Lambda API.")
