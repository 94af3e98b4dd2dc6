"""`python -m courierflow.local.lambda_service ...` = `courierflow lambda ...`."""

from courierflow.local.lambda_service.cli import app

app()
