"""Shared settings for tests/: hypothesis runs a fixed, derandomized set of examples (CI), or fresh
ones under HYPOTHESIS_PROFILE=explore (`make fuzz`); one folder for the CUDA kernels compiled for
the CPU emulation (test_cuda_kernels.py, test_cuda_loader.py)."""
import os

import pytest
from hypothesis import settings

# "tests" (the default, CI): the same examples every run. "explore": new random examples every run,
# HYPOTHESIS_EXPLORE_SCALE (default 20) times as many for every hypothesis test, those with their
# own max_examples included; a failure prints its falsifying example and a @reproduce_failure.
EXPLORE = os.environ.get("HYPOTHESIS_PROFILE", "") == "explore"
if os.environ.get("HYPOTHESIS_PROFILE", "explore") != "explore":
    raise ValueError(f"HYPOTHESIS_PROFILE must be 'explore' or unset, got {os.environ['HYPOTHESIS_PROFILE']!r}")
settings.register_profile("tests", max_examples=20, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=20, deadline=None, derandomize=False, print_blob=True)
settings.load_profile("explore" if EXPLORE else "tests")


def pytest_collection_modifyitems(items):
    if EXPLORE:
        scale = int(os.environ.get("HYPOTHESIS_EXPLORE_SCALE", "20"))
        for test in {getattr(item, "function", None) for item in items} - {None}:
            # @given reads its settings from the test when it runs: scale them once per test function
            current = getattr(test, "_hypothesis_internal_use_settings", None)
            if current is not None and not getattr(test, "explore_scaled", False):
                test._hypothesis_internal_use_settings = settings(
                    current, max_examples=current.max_examples * scale, derandomize=False)
                test.explore_scaled = True


@pytest.fixture(scope="session")
def emulation_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda-emulation"))
