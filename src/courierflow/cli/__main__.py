"""`python -m courierflow.cli`: the `courierflow` command from any interpreter."""

from courierflow.cli import main

main()
