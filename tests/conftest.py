"""Fixtures shared by tests/: one folder for the CUDA kernels compiled for the CPU emulation
(test_cuda_kernels.py, test_cuda_loader.py). The hypothesis profiles are in the root conftest.py."""
import pytest


@pytest.fixture(scope="session")
def emulation_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda-emulation"))
