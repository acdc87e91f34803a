"""Shared settings for tests/: hypothesis runs a fixed, derandomized set of examples; one folder
for the CUDA kernels compiled for the CPU emulation (test_cuda_kernels.py, test_cuda_loader.py)."""
import pytest
from hypothesis import settings

settings.register_profile("tests", max_examples=20, deadline=None, derandomize=True)
settings.load_profile("tests")


@pytest.fixture(scope="session")
def emulation_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda-emulation"))
