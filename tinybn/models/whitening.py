"""The frozen patch-whitening filters of the fast CIFAR model's first layer, from training images.

Shapes: images (N, H, W, C), NHWC; patches of K x K pixels (K = kernel_size), each flattened
in the (KH, KW, C) order of an HWIO kernel, so D = K*K*C values per patch and a conv2d
(VALID, stride 1) with the kernel computes every patch's dot products.

    S       = (1 / M) sum over the M patches p of p p^T         (D x D, not centred: airbench's)
    S       = V diag(lambda) V^T,  lambda_1 >= ... >= lambda_D   (numpy.linalg.eigh, reversed)
    w_j     = v_j / sqrt(lambda_j + eps)                          j = 1 .. D
    kernel  = [w_1 .. w_D, -w_1 .. -w_D] as (K, K, C, 2 D)

so output channel j of the conv is the patch's coordinate along the j-th principal direction,
scaled to variance lambda_j / (lambda_j + eps) (1 when eps = 0: whitened), and channel D + j is
its negative (a GELU after it then passes each direction's positive and negative half).

Source: K. Jordan, airbench94.py (github.com/KellerJordan/cifar10-airbench): get_patches,
get_whitening_parameters and init_whitening_conv, with K = 2 and eps = 5e-4, from the first
5000 training images after the mean/std normalisation; the idea of a frozen whitening first
layer from D. Page, "How to train your ResNet 8: bag of tricks" (myrtle.ai, 2019). airbench
accumulates S in float32 on the GPU; here S is summed and decomposed in float64, over chunks
of images so that no more than `chunk` images' patches are held at once.

Floor: models; imports numpy only.
"""
import numpy as np

AIRBENCH_EPS = 5e-4


def _check_images(images, kernel_size):
    if not isinstance(kernel_size, (int, np.integer)) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"patch whitening: kernel_size must be a positive int, got {kernel_size!r}")
    if getattr(images, "ndim", None) != 4 or images.dtype.kind not in "fiu":
        raise ValueError(f"patch whitening: images must be a real array (N, H, W, C), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    n, h, w, _ = images.shape
    if n == 0 or h < kernel_size or w < kernel_size:
        raise ValueError(f"patch whitening: images {images.shape} hold no {kernel_size}x{kernel_size} patch")


def patches(images, kernel_size):
    """Every K x K patch (VALID, stride 1) of `images` as rows (N*OH*OW, K*K*C) in float64,
    each flattened in (KH, KW, C) order: patches @ kernel.reshape(-1, O) is conv2d(images, kernel)."""
    k = kernel_size
    n, h, w, c = images.shape
    oh, ow = h - k + 1, w - k + 1
    x = np.asarray(images, np.float64)
    cols = np.stack([x[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)], axis=3)
    return cols.reshape(n * oh * ow, k * k * c)


def patch_covariance(images, kernel_size=2, chunk=256):
    """S = mean of p p^T over every K x K patch of `images`, in float64 (D x D)."""
    _check_images(images, kernel_size)
    total, count = 0.0, 0
    for start in range(0, len(images), chunk):
        rows = patches(images[start:start + chunk], kernel_size)
        total = total + rows.T @ rows
        count += rows.shape[0]
    return total / count


def patch_whitening_kernel(images, kernel_size=2, eps=AIRBENCH_EPS, chunk=256):
    """The frozen whitening kernel (K, K, C, 2 D) of airbench's first layer, in float64.

    Channels 0..D-1 are the principal directions of the patches, largest eigenvalue first,
    each divided by sqrt(eigenvalue + eps); channels D..2D-1 are their negatives.
    """
    if not eps >= 0:
        raise ValueError(f"patch whitening: eps must be >= 0, got {eps}")
    cov = patch_covariance(images, kernel_size, chunk)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)              # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    scaled = eigenvectors / np.sqrt(eigenvalues + eps)
    k, c = kernel_size, images.shape[-1]
    return np.concatenate([scaled, -scaled], axis=1).reshape(k, k, c, 2 * k * k * c)
