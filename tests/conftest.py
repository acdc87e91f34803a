"""Shared settings for tests/: hypothesis runs a fixed, derandomized set of examples."""
from hypothesis import settings

settings.register_profile("tests", max_examples=20, deadline=None, derandomize=True)
settings.load_profile("tests")
