"""A module that raises while being imported."""

raise RuntimeError("configuration missing at import")
