"""Loaded by pytest before tests/ and crosscheck/.

tinybn is imported ahead of numpy, so it can set OpenBLAS's thread timeout before numpy loads
OpenBLAS (see tinybn/__init__.py).

Hypothesis, for both folders (a profile is global to the session, so it is chosen once, here):
"ci", the default, runs the same 15 examples of every test each run; HYPOTHESIS_PROFILE=explore
(`make fuzz`) draws new random examples every run, HYPOTHESIS_EXPLORE_SCALE (default 20) times as
many for every hypothesis test, those that set their own max_examples included; a failure prints
its falsifying example and a @reproduce_failure blob.

TensorFlow's oneDNN kernels are off for the whole session (before any test file imports TF). TF
turns them on by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX, so the reference would
change with the machine. On an AMD EPYC that has them, its Conv2D disagreed with both tinybn and
TF's own Eigen kernels (relative error inf for a SAME 2x5 kernel, stride (1, 2), on a (2, 2, 2, 1)
input) and refused an empty batch ("input depth must be evenly divisible by filter depth"). The
tests compare against the Eigen kernels, the ones every x86 CPU runs.
"""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tinybn  # noqa: F401
from hypothesis import settings

EXPLORE = os.environ.get("HYPOTHESIS_PROFILE", "") == "explore"
if os.environ.get("HYPOTHESIS_PROFILE", "explore") != "explore":
    raise ValueError(f"HYPOTHESIS_PROFILE must be 'explore' or unset, got {os.environ['HYPOTHESIS_PROFILE']!r}")
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=15, deadline=None, derandomize=False, print_blob=True)
settings.load_profile("explore" if EXPLORE else "ci")


def pytest_collection_modifyitems(items):
    if EXPLORE:
        scale = int(os.environ.get("HYPOTHESIS_EXPLORE_SCALE", "20"))
        for test in {getattr(item, "function", None) for item in items} - {None}:
            # A test's own @settings(max_examples=...) wins over any profile, and hypothesis has no
            # public way to scale it: @given reads the settings it stored on the test function when
            # the test runs, so they are replaced here, once per test function.
            current = getattr(test, "_hypothesis_internal_use_settings", None)
            if current is not None and not getattr(test, "explore_scaled", False):
                test._hypothesis_internal_use_settings = settings(
                    current, max_examples=current.max_examples * scale, derandomize=False)
                test.explore_scaled = True
