"""`courierflow aws ...`, `deploy`, `destroy`, `build-layer` (placeholder)."""

import typer

app = typer.Typer(help="Deploy to and check AWS.")


def register(root: typer.Typer) -> None:
    """Add the top-level AWS commands (deploy, destroy, build-layer) to the root app."""
