"""Loaded by pytest before tests/ and crosscheck/: tinybn is imported ahead of numpy, so it can
set OpenBLAS's thread timeout before numpy loads OpenBLAS (see tinybn/__init__.py)."""
import tinybn  # noqa: F401
