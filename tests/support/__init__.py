"""Helpers for the tests: what a test needs that courierflow itself does not ship."""
