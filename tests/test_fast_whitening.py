"""The fast CIFAR model's patch-whitening filters against their closed forms: the conv of the
kernel whitens the patches (covariance I with eps = 0, diag(lambda / (lambda + eps)) with eps),
largest direction first, the second half the negation of the first, any chunking the same."""
import numpy as np
import pytest

from tinybn.models.whitening import patch_covariance, patch_whitening_kernel, patches
from tinybn.ops.conv import conv2d


def _correlated_images(n=24, size=8, seed=0):
    """Images whose neighbouring pixels and channels correlate, as natural images' do."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size + 1, size + 1, 3))
    x = x[:, 1:, 1:] + x[:, :-1, 1:] + x[:, 1:, :-1]         # neighbours share terms
    return x @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]) + 0.3


def _conv_outputs(images, kernel):
    return conv2d(images, kernel, 1, "VALID").data.reshape(-1, kernel.shape[-1])


@pytest.mark.parametrize("kernel_size", [1, 2, 3])
def test_patches_are_what_conv2d_sees(kernel_size):
    images = _correlated_images(n=3, size=6)
    d = kernel_size * kernel_size * 3
    kernel = np.random.default_rng(1).standard_normal((kernel_size, kernel_size, 3, 5))
    np.testing.assert_allclose(patches(images, kernel_size) @ kernel.reshape(d, 5), _conv_outputs(images, kernel),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [1, 2, 3])
def test_whitened_patches_have_identity_covariance(kernel_size):
    images = _correlated_images()
    d = kernel_size * kernel_size * 3
    kernel = patch_whitening_kernel(images, kernel_size, eps=0.0)
    assert kernel.shape == (kernel_size, kernel_size, 3, 2 * d) and kernel.dtype == np.float64
    out = _conv_outputs(images, kernel[..., :d])
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(d), atol=1e-10)
    np.testing.assert_array_equal(kernel[..., d:], -kernel[..., :d])


def test_eps_shrinks_each_direction_by_lambda_over_lambda_plus_eps():
    """airbench's eps = 5e-4: direction j keeps variance lambda_j / (lambda_j + eps), largest first."""
    images = _correlated_images() * 0.05        # eigenvalues near eps, where the shrinkage shows
    lam = np.linalg.eigvalsh(patch_covariance(images, 2))[::-1]
    out = _conv_outputs(images, patch_whitening_kernel(images)[..., :12])
    np.testing.assert_allclose(out.T @ out / len(out), np.diag(lam / (lam + 5e-4)), atol=1e-10)
    assert lam[0] > lam[-1] and (lam / (lam + 5e-4)).min() < 0.9


def test_covariance_closed_form_and_chunking():
    """Constant images c give S = c c^T tiled over the patch; the chunk size changes nothing."""
    images = np.broadcast_to(np.array([1.0, 2.0, 3.0]), (4, 5, 5, 3))
    p = np.tile([1.0, 2.0, 3.0], 4)
    np.testing.assert_allclose(patch_covariance(images, 2), np.outer(p, p), rtol=1e-15)
    images = _correlated_images()
    np.testing.assert_allclose(patch_covariance(images, 2, chunk=5), patch_covariance(images, 2, chunk=1000),
                               rtol=1e-12)


def test_uint8_images_are_read_as_float64():
    images = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    np.testing.assert_allclose(patch_covariance(images, 2), patch_covariance(images.astype(np.float64), 2),
                               rtol=1e-15)


@pytest.mark.parametrize("images, kernel_size, eps, message", [
    (np.zeros((2, 4, 4)), 2, 0.0, r"images must be a real array \(N, H, W, C\)"),
    (np.zeros((2, 4, 4, 3), np.complex128), 2, 0.0, r"images must be a real array \(N, H, W, C\)"),
    (np.zeros((0, 4, 4, 3)), 2, 0.0, r"images \(0, 4, 4, 3\) hold no 2x2 patch"),
    (np.zeros((2, 1, 4, 3)), 2, 0.0, r"images \(2, 1, 4, 3\) hold no 2x2 patch"),
    (np.zeros((2, 4, 4, 3)), 0, 0.0, "kernel_size must be a positive int, got 0"),
    (np.zeros((2, 4, 4, 3)), 2, -1.0, "eps must be >= 0, got -1.0"),
])
def test_bad_input(images, kernel_size, eps, message):
    with pytest.raises(ValueError, match="patch whitening: " + message):
        patch_whitening_kernel(images, kernel_size, eps)
