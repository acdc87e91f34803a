"""The hypothesis profiles of the root conftest.py: derandomized by default (CI), fresh examples and
HYPOTHESIS_EXPLORE_SCALE times as many under HYPOTHESIS_PROFILE=explore (`make fuzz`)."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = '''
import os
from hypothesis import given, settings, strategies as st

def _record(name, x):
    with open(os.path.join(os.path.dirname(__file__), name), "a") as f:
        f.write(f"{x}\\n")

@given(st.integers())
def test_profile_count(x):
    _record("profile.txt", x)

@settings(max_examples=3)
@given(st.integers())
def test_own_count(x):
    _record("own.txt", x)
'''


def _run(tmp_path, run, **env):
    folder = tmp_path / f"run{run}"
    folder.mkdir()
    shutil.copy(os.path.join(ROOT, "conftest.py"), folder / "conftest.py")
    (folder / "test_probe.py").write_text(PROBE)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HYPOTHESIS_")}
    environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"          # only hypothesis's plugin: a faster start
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "hypothesis.extra.pytestplugin", str(folder)],
                          env={**environ, **env}, cwd=folder, capture_output=True, text=True)
    if proc.returncode:
        return proc
    return {name: (folder / f"{name}.txt").read_text().split() for name in ("profile", "own")}


def test_default_profile_is_derandomized(tmp_path):
    first, second = _run(tmp_path, 1), _run(tmp_path, 2)
    assert first == second and len(first["profile"]) == 15 and len(first["own"]) == 3


def test_explore_profile_draws_fresh_and_scaled_examples(tmp_path):
    first = _run(tmp_path, 1, HYPOTHESIS_PROFILE="explore", HYPOTHESIS_EXPLORE_SCALE="4")
    second = _run(tmp_path, 2, HYPOTHESIS_PROFILE="explore", HYPOTHESIS_EXPLORE_SCALE="4")
    assert len(first["profile"]) == len(second["profile"]) == 60          # 15 x 4
    assert len(first["own"]) == len(second["own"]) == 12                  # a test's own 3 x 4
    assert first["profile"] != second["profile"]


def test_unknown_profile_is_refused(tmp_path):
    proc = _run(tmp_path, 1, HYPOTHESIS_PROFILE="bogus")
    assert proc.returncode != 0
    assert "HYPOTHESIS_PROFILE must be 'explore' or unset, got 'bogus'" in proc.stdout + proc.stderr
