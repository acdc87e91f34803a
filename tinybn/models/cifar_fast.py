"""fast: airbench94's CIFAR-10 network, on full 32x32 images.

Input: images (N, 32, 32, 3) float32, normalised per channel as airbench does,
(x / 255 - mean) / std with mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).
Output: logits (N, 10).

    whiten   2x2 VALID conv, 3 -> 24, frozen kernel (patch whitening), bias   (N, 31, 31, 24)
    gelu0    GELU
    block1   conv 3x3 SAME 24 -> 64, no bias -> max pool 2x2/2 -> BN -> GELU   (N, 15, 15, 64)
             -> conv 3x3 SAME 64 -> 64, no bias -> BN -> GELU
    block2   the same, 64 -> 256                                             (N, 7, 7, 256)
    block3   the same, 256 -> 256                                            (N, 3, 3, 256)
    pool     max pool 3x3/3 VALID -> flatten                                 (N, 256)
    dense    256 -> 10, no bias; scale: logits = dense / 9                   (N, 10)

1,971,352 trained parameters (the closed form is in tests/test_fast_model.py) and the
288 frozen values of the whitening kernel, which is a buffer, not a parameter. The logits,
the loss, every gradient and the BN moving statistics after a step equal the same network
built from tf.nn ops, in float64 (crosscheck/test_tf_fast_model.py: 1e-13 of the largest value
forward, 1e-12 backward). The GELU uses TF's float32-rounded 1/sqrt(2); PyTorch's nn.GELU, which
airbench uses, takes 1/sqrt(2) in full and moves the logits by about 3e-8.

Every component, with its source. airbench is K. Jordan, "94% on CIFAR-10 in 3.29 seconds on
a single GPU" (arXiv:2404.00498, 2024), and its code, github.com/KellerJordan/cifar10-airbench
airbench94.py (the hyperparameters in HYPERPARAMETERS are its `hyp`; the functions named
below are that file's).
    patch whitening     frozen first layer from the eigenvectors of the 2x2 patches'
                        covariance, each direction and its negative (whitening.py; airbench's
                        init_whitening_conv), after D. Page, "How to train your ResNet 8: bag
                        of tricks" (myrtle.ai, 2019).
                        The bias trains for the first 3 epochs only (whiten_bias_epochs).
    identity init       each 3x3 conv starts as PyTorch's default uniform(+-1/sqrt(fan_in)),
                        with its first C_in filters replaced by the identity (Dirac) filter
                        (airbench's Conv.reset_parameters, dirac_ on w[:C_in]).
    GELU                Hendrycks and Gimpel, arXiv:1606.08415; the exact (erf) form,
                        PyTorch's nn.GELU() default, as airbench uses.
    batch norm          Ioffe and Szegedy, arXiv:1502.03167. airbench's BatchNorm: epsilon
                        1e-12, PyTorch momentum 0.4 (decay 0.6 here), PyTorch's unbiased
                        moving variance ("bessel"), weight frozen at 1 (scale=False here:
                        the same function with one parameter less per channel) and the bias
                        trained at 64x the learning rate (bias_scaler).
    3 blocks 64/256/256 conv -> pool -> BN -> GELU -> conv -> BN -> GELU (airbench's ConvGroup).
    logit scale 1/9     airbench's scaling_factor (Page's ResNet-9 scales its logits by 1/8 likewise).
    label smoothing 0.2 Szegedy et al., "Rethinking the Inception architecture", arXiv:1512.00567,
                        section 7; the loss is summed over the batch, as airbench sums it.
The training recipe's other components (Nesterov SGD with per-group learning rates and
decoupled-parametrised weight decay, the triangular schedule, Lookahead-style EMA of the
weights every 5 steps (Zhang et al., arXiv:1907.08610), alternating flip and 2-pixel
reflect-padded translation, and flip + translate test-time augmentation) live with the
optimizer, the input pipeline and the task, each with its own source.

Ablation (precision@1 on the 10,000 held-out images, TTA level 2, each component removed in
turn; the full recipe: the mean of seeds 0-2; a removal: one run of seed 0, against seed 0's
89.88% in the last column, but flip TTA's: the three seeds' checkpoints at level 0; filled in by
the lead from real runs):

    | removed component          | precision@1      | time to final checkpoint | change |
    |----------------------------|------------------|--------------------------|--------|
    | none (the full recipe)     | 89.89%           | 60 min 42 s (seed 2)     |        |
    | none, seed 0 again (5)     | 89.88%           | 20 min 46 s (5)          |  0.00  |
    | none, seed 0, machine 3    | 89.99%           | 30 min 47 s (7)          | +0.11  |
    | patch whitening            | 89.47%           | 67 min 45 s (1)          | -0.41  |
    | identity init              | 89.81%           | 20 min 28 s (5)          | -0.07  |
    | GELU (ReLU instead)        | 89.20%           | 20 min 53 s (5)          | -0.68  |
    | frozen BN scale            | 89.34%           | 30 min 54 s (7)          | -0.65  |
    | BN bias lr x64             | 89.03%           | 19 min 16 s (5)          | -0.85  |
    | logit scale 1/9            | 60.71% (6)       | 18 min 0 s (5)           | -29.17 |
    | label smoothing            | 89.46%           | 55 min 36 s (3)          | -0.42  |
    | Nesterov momentum          | 89.28%           | 23 min 0 s (5)           | -0.60  |
    | EMA / lookahead            | 89.34%           | 56 min 54 s (4)          | -0.54  |
    | alternating flip           | 89.59%           | 22 min 4 s (5)           | -0.29  |
    | translate 2 px             | 89.21%           | 68 min 59 s (2)          | -0.67  |
    | flip TTA (TTA level 0)     | 89.02% (seeds 0-2) | the same runs          | -0.87  |

The full recipe's row: seeds 0, 1 and 2 gave 89.88%, 89.91% and 89.89% (387 steps on the
developers' 40,000 JPEG images, TTA level 2); its time is seed 2's, the one run that had the
machine to itself. Without TTA (the same checkpoints at level 0) seeds 0, 1 and 2 gave 88.83%,
89.16% and 89.08%, 0.87 points below their mean at level 2; with the flip alone (level 1) 89.74%,
89.89% and 89.48%, mean 89.70%: the test-time flip gives 0.68 points, its translations 0.19 more.
crosscheck/test_tf_fast_trajectory.py holds the whole loop equal to airbench94's, so the
distance to airbench's 94.0% is the data's (README, "The fast recipe"). (1): the machine was
shared with evaluations for its first 15 minutes (steps of 17-19 s there, 9.1-10.4 s after).
(2): alone on the machine, whose speed drifted (steps of 9.3-13.3 s; seed 2's were 8.0-12.9 s).
(3): alone on the machine, on a fast day (steps of 7.9-9.8 s). (4): alone but for 20 s of tests
in its first minutes (steps of 7.3-14.9 s). (5): 2026-12-02, another machine of the same kind (2
cores; an AMD EPYC with AVX-512), alone, steps of 2.6-4.5 s: the full recipe's seed 0 again gave
89.88% (the same 8,988 of 10,000 images), so the precisions carry across the two machines; the
alternating-flip run's time includes numba's first compile on that machine. (6): with logits 9x
larger the recipe's high learning rate stalls it: training accuracy stays at 9-16% for the first
200 steps, through the peak of the schedule, and climbs only as the rate decays (58.6% at step
370, where the full recipe's seed 0 is at 96.3%). (7): 2026-12-02, a third 2-core machine (an
Intel Xeon with AVX-512 and AMX), alone, steps of 3.4-5.9 s after a first of 7.5 s that includes
numba's first compile there. There the full recipe's seed 0 gave 89.99%, not 89.88%: this CPU's
float32 arithmetic differs in its last bits, so its row's change is against 89.99%.
The precisions are deterministic; the times are this machine's of the day.

What "removed" means, row by row: `python -m tinybn.train cifar --model fast --without NAME`
(repeatable; NAME as in ABLATIONS below, recorded in each checkpoint's meta; a resumed run must
give the same set). airbench94.py has no such switches: where its code or paper shows the plain
variant, that is what is taken; elsewhere the one-line change named. Nothing else moves.
    whitening           the first layer is airbench's Conv(3, 24, 2, padding=0, bias=True) as built
                        before init_whitening_conv: a trainable kernel of the same shape, initialised
                        like the other convs (identity init: Conv.reset_parameters), in the "other"
                        group; its bias still freezes after whiten_bias_epochs
    identity-init       every conv keeps PyTorch's default uniform init (no dirac_ filters)
    gelu                nn.ReLU in place of every nn.GELU (the four GELU positions)
    frozen-bn-scale     BN's weight trains (init 1): airbench's BatchNorm(weight=True), which its
                        'norm' in name rule puts in the BN group with the biases (lr x bias_scaler)
    bn-bias-lr          bias_scaler 1: the BN group gets the lr and weight decay of the others
    logit-scale         no final Mul(1/9): the logits are the dense layer's output
    label-smoothing     label_smoothing 0: the loss is sparse_softmax_cross_entropy_with_logits summed
    nesterov            SGD(nesterov=False): heavy-ball momentum, the same lr, momentum and decay
    lookahead           no LookaheadAverage: the weights are the last step's, never averaged
    alternating-flip    airbench's altflip=False (airbench/utils.py CifarLoader, the paper's random
                        flip baseline): each epoch flips each image by a fresh fair coin
    translate           translate 0: no padding and no shifts (flips unchanged)
flip TTA is an evaluation switch: python -m tinybn.eval cifar --model fast --tta-level 0 (or 1).

Floor: models (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root and models.
"""
import numpy as np

from ..backend import array_module
from ..nn import init
from ..nn.batchnorm import BatchNorm
from ..nn.layers import GELU, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from ..nn.module import Module
from ..ops.basic import bias_add, mul, reduce_sum
from ..ops.conv import conv2d
from ..ops.losses import sparse_softmax_cross_entropy_with_label_smoothing, sparse_softmax_cross_entropy_with_logits
from ..tensor import Tensor
from .classifier import SequentialClassifier
from .whitening import AIRBENCH_EPS, patch_whitening_kernel

NUM_CLASSES = 10
IMAGE_SIZE = 32
WIDTHS = (64, 256, 256)

# airbench94.py's hyp, by its names; lr and weight_decay are per 1024 examples (see there)
HYPERPARAMETERS = {
    "batch_size": 1024, "train_epochs": 9.9, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
    "bias_scaler": 64.0, "label_smoothing": 0.2,
    "ema": {"start_epochs": 3, "decay_base": 0.95, "decay_pow": 3.0, "every_n_steps": 5},
    "whiten_bias_epochs": 3, "flip": True, "translate": 2,
    "whitening_kernel_size": 2, "whitening_eps": AIRBENCH_EPS, "whitening_images": 5000,
    "batchnorm_decay": 0.6, "batchnorm_epsilon": 1e-12, "scaling_factor": 1 / 9, "tta_level": 2,
}

# the components --without removes (the docstring says what each removal is); the model
# takes the first six, FastRecipe bn-bias-lr, nesterov and lookahead, FastBatches the flips
ABLATIONS = ("whitening", "identity-init", "gelu", "frozen-bn-scale", "logit-scale", "label-smoothing",
             "bn-bias-lr", "nesterov", "lookahead", "alternating-flip", "translate")


def check_ablations(without):
    """`without` as a sorted tuple of ABLATIONS names; ValueError naming an unknown one."""
    without = tuple(sorted(set(without or ())))
    unknown = [name for name in without if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"fast model: unknown component {unknown[0]!r} to remove (the components: "
                         f"{', '.join(ABLATIONS)})")
    return without


def torch_default_uniform():
    """PyTorch's default conv and linear init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return init.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def partial_identity():
    """torch_default_uniform, then the first min(C_in, C_out) filters set to the identity:
    filter i is 1 at the window's centre on input channel i and 0 elsewhere (torch.nn.init.dirac_)."""
    uniform = torch_default_uniform()

    def initializer(shape, rng, dtype=np.float32):
        kernel = uniform(shape, rng, dtype)
        kh, kw, cin, cout = shape
        m = min(cin, cout)
        kernel[..., :m] = 0
        kernel[kh // 2, kw // 2, np.arange(m), np.arange(m)] = 1
        return kernel
    return initializer


class PatchWhitening(Module):
    """conv2d(x, kernel, VALID) + bias, the kernel a frozen buffer set by `initialize(images)`
    (whitening.patch_whitening_kernel); zeros until then. Buffer "kernel" (K, K, C, 2 K*K*C),
    parameter "bias" (2 K*K*C,), zeros. trainable_init (an initializer, --without whitening):
    the kernel is a parameter drawn from it instead, and initialize() is refused."""

    def __init__(self, in_channels=3, kernel_size=2, dtype=np.float32, trainable_init=None, rng=None):
        super().__init__()
        filters = 2 * kernel_size * kernel_size * in_channels
        self.kernel_size, self.in_channels = kernel_size, in_channels
        shape = (kernel_size, kernel_size, in_channels, filters)
        self.trainable = trainable_init is not None
        if self.trainable:
            self.kernel = self.add_parameter("kernel", trainable_init(shape, rng or np.random.default_rng(), dtype))
        else:
            self.kernel = self.add_buffer("kernel", np.zeros(shape, dtype))
        self.bias = self.add_parameter("bias", np.zeros(filters, dtype))

    def initialize(self, images, eps=AIRBENCH_EPS):
        """Set the kernel from training images (N, H, W, C), normalised as the model's inputs are."""
        if self.trainable:
            raise ValueError("PatchWhitening.initialize: this layer's kernel is trained (--without whitening)")
        kernel = patch_whitening_kernel(images, self.kernel_size, eps)
        xp = array_module(self.kernel.data)
        self.kernel.data = xp.asarray(kernel.astype(self.kernel.dtype))
        return self

    def forward(self, x):
        return bias_add(conv2d(x, self.kernel, 1, "VALID"), self.bias)

    def extra_repr(self):
        return f"kernel={self.kernel.shape} ({'trained' if self.trainable else 'frozen'})"


class Scale(Module):
    """y = x * factor, the factor a constant of x's dtype (airbench's Mul)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        xp = array_module(x.data)
        return mul(x, Tensor(xp.asarray(self.factor, dtype=x.dtype)))

    def extra_repr(self):
        return f"{self.factor:g}"


def conv_group(cin, cout, rng, dtype, bn_decay, bn_epsilon, without=()):
    """airbench's ConvGroup: conv -> max pool 2 -> BN -> GELU -> conv -> BN -> GELU (the
    ablations of `without`: ReLU, the default init, BN with a trained scale)."""
    activation = ReLU if "gelu" in without else GELU
    kernel_init = torch_default_uniform if "identity-init" in without else partial_identity

    def conv(a, b):
        return Conv2D(a, b, 3, padding="SAME", use_bias=False, kernel_initializer=kernel_init(), rng=rng, dtype=dtype)

    def norm():
        return BatchNorm(cout, decay=bn_decay, epsilon=bn_epsilon, scale="frozen-bn-scale" in without,
                         moving_variance_rule="bessel", dtype=dtype)
    return Sequential(("conv1", conv(cin, cout)), ("pool", MaxPool2D(2, 2, "VALID")), ("norm1", norm()),
                      ("gelu1", activation()), ("conv2", conv(cout, cout)), ("norm2", norm()),
                      ("gelu2", activation()))


class FastCifarModel(SequentialClassifier):
    """The network above; loss = sum over the batch of the label-smoothed cross-entropy.
    `without`: the ablations it was built with (ABLATIONS names, sorted)."""

    label_smoothing = HYPERPARAMETERS["label_smoothing"]
    without = ()

    @property
    def whitening(self):
        return dict(self.net.named_children())["whiten"]

    def initialize_whitening(self, images, eps=AIRBENCH_EPS):
        self.whitening.initialize(images, eps)
        return self

    def loss(self, logits, labels):
        """sum of sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, 0.2), as airbench's
        CrossEntropyLoss(label_smoothing=0.2, reduction='none')(...).sum(); no weight decay term
        (the optimizer decays the weights). --without label-smoothing: the plain sparse cross-entropy."""
        if "label-smoothing" in self.without:
            return reduce_sum(sparse_softmax_cross_entropy_with_logits(labels, logits))
        return reduce_sum(sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, self.label_smoothing))

    def parameter_groups(self):
        """airbench's two groups of (name, parameter): the BN biases ("norm_biases", trained at
        bias_scaler times the learning rate) and every other parameter ("other"). A trained BN
        scale (--without frozen-bn-scale) joins the biases, as airbench's 'norm' in name rule puts it."""
        groups = {"norm_biases": [], "other": []}
        for name, p in self.named_parameters():
            groups["norm_biases" if name.rsplit("/", 1)[-1] in ("beta", "gamma") else "other"].append((name, p))
        return groups


def fast(rng=None, dtype=np.float32, whitening_images=None, bn_decay=HYPERPARAMETERS["batchnorm_decay"],
         bn_epsilon=HYPERPARAMETERS["batchnorm_epsilon"], widths=WIDTHS, without=()):
    """The fast model; its whitening kernel is set from `whitening_images` when given, else
    later by `model.initialize_whitening(images)` (airbench: the first 5000 training images).
    `widths`: the three blocks' channels (airbench's 64, 256, 256; narrower ones for tests).
    `without`: ABLATIONS names to remove (those of the optimizer and input are only recorded)."""
    rng = rng or np.random.default_rng()
    without = check_ablations(without)
    w1, w2, w3 = widths
    k = HYPERPARAMETERS["whitening_kernel_size"]
    whiten_width = 2 * 3 * k ** 2
    trained_init = None
    if "whitening" in without:
        trained_init = torch_default_uniform() if "identity-init" in without else partial_identity()
    activation = ReLU if "gelu" in without else GELU
    blocks = [("block1", conv_group(whiten_width, w1, rng, dtype, bn_decay, bn_epsilon, without)),
              ("block2", conv_group(w1, w2, rng, dtype, bn_decay, bn_epsilon, without)),
              ("block3", conv_group(w2, w3, rng, dtype, bn_decay, bn_epsilon, without)),
              ("pool", MaxPool2D(3, 3, "VALID")), ("flatten", Flatten()),
              ("dense", Dense(w3, NUM_CLASSES, use_bias=False, kernel_initializer=torch_default_uniform(),
                              rng=rng, dtype=dtype))]
    # drawn last: a trained first layer leaves every other layer's initial values as they were
    layers = [("whiten", PatchWhitening(3, k, dtype, trained_init, rng)), ("gelu0", activation())] + blocks
    if "logit-scale" not in without:
        layers.append(("scale", Scale(HYPERPARAMETERS["scaling_factor"])))
    model = FastCifarModel(layers)
    model.without = without
    if whitening_images is not None and "whitening" not in without:
        model.initialize_whitening(whitening_images)
    return model


MODELS = {"fast": fast}
