"""Fixtures shared between test files, by subject; tests/conftest.py registers them (pytest_plugins)."""
