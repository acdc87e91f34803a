"""--without COMPONENT (models/cifar_fast.py ABLATIONS): each switch removes its component, as the
model's docstring says, and leaves every other part as it was; the set is recorded in the
checkpoint, refused on resume when it differs, and evaluation rebuilds the ablated network."""
import argparse

import numpy as np
import pytest

from tinybn import checkpoint
from tinybn.data.fast_augment import base_flips, epoch_images, flip_left_right, normalize, random_flips
from tinybn.models.cifar_fast import ABLATIONS, check_ablations, fast
from tinybn.nn.layers import GELU, ReLU
from tinybn.tasks.cifar_fast import evaluate_fast, train_fast, training_batches
from tinybn.tasks.fast_recipe import FastRecipe, evaluate, sgd_settings
from tinybn.tensor import Tensor
from tinybn.training import latest_checkpoint

WIDTHS = (8, 16, 16)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _model(*without, images=None):
    model = fast(rng=np.random.default_rng(0), widths=WIDTHS, without=without)
    if images is not None and "whitening" not in without:
        model.initialize_whitening(normalize(images[:16]))
    return model


def _params(model):
    return dict(model.named_parameters())


def test_names_are_checked():
    assert check_ablations(["gelu", "nesterov", "gelu"]) == ("gelu", "nesterov")
    with pytest.raises(ValueError, match="unknown component 'cutout'"):
        fast(widths=WIDTHS, without=["cutout"])
    assert len(ABLATIONS) == 11


def test_without_whitening_the_first_layer_is_a_trained_conv_initialised_like_the_others():
    full, plain = _model(), _model("whitening")
    assert "net/whiten/kernel" not in _params(full) and _params(plain)["net/whiten/kernel"].shape == (2, 2, 3, 24)
    kernel = _params(plain)["net/whiten/kernel"].numpy()
    dirac = np.zeros((2, 2, 3, 3))
    dirac[1, 1, range(3), range(3)] = 1                  # dirac_ on the first C_in filters, as the others
    np.testing.assert_array_equal(kernel[..., :3], dirac)
    assert 0 < np.abs(kernel[..., 3:]).max() <= 1 / np.sqrt(12)        # PyTorch's U(+-1/sqrt(fan_in))
    for name, p in _params(full).items():                # every other layer starts where it did
        np.testing.assert_array_equal(p.numpy(), _params(plain)[name].numpy(), err_msg=name)
    assert "net/whiten/kernel" in [n for n, _ in plain.parameter_groups()["other"]]
    with pytest.raises(ValueError, match="is trained"):
        plain.initialize_whitening(np.zeros((4, 32, 32, 3), np.float32))
    uniform = _params(_model("whitening", "identity-init"))["net/whiten/kernel"].numpy()
    assert np.abs(uniform[1, 1, range(3), range(3)] - 1).min() > 0  # no dirac filter left


def test_without_identity_init_the_convs_keep_the_uniform_draw():
    full, plain = _params(_model()), _params(_model("identity-init"))
    for name in [n for n in full if n.endswith("kernel") and "conv" in n]:
        a, b = full[name].numpy(), plain[name].numpy()
        m = min(a.shape[2], a.shape[3])
        np.testing.assert_array_equal(a[..., m:], b[..., m:], err_msg=name)     # the same draw
        assert np.abs(b[..., :m]).max() <= 1 / np.sqrt(9 * a.shape[2]) and not np.array_equal(a, b)


def test_without_gelu_every_gelu_is_a_relu():
    def activations(model):
        return {n: type(m) for n, m in model.named_modules() if isinstance(m, (GELU, ReLU))}
    full, plain = activations(_model()), activations(_model("gelu"))
    assert len(full) == 7 and set(full.values()) == {GELU}
    assert plain == dict.fromkeys(full, ReLU)


def test_without_frozen_bn_scale_gamma_trains_in_the_bn_group():
    model = _model("frozen-bn-scale")
    groups = {n: g for g, pairs in model.parameter_groups().items() for n, _ in pairs}
    gammas = [n for n in groups if n.endswith("/gamma")]
    assert len(gammas) == 6 and {groups[n] for n in gammas} == {"norm_biases"}
    assert all(np.array_equal(_params(model)[n].numpy(), np.ones(_params(model)[n].shape)) for n in gammas)
    assert not any(n.endswith("/gamma") for n in _params(_model()))


@pytest.mark.parametrize("without, beta_is_like_the_rest", [((), False), (("bn-bias-lr",), True)])
def test_without_bn_bias_lr_the_bn_group_gets_the_others_settings(without, beta_is_like_the_rest):
    images, _ = _data()
    recipe = FastRecipe(_model(), len(images), 16, 3, without=without)
    settings = dict(zip(recipe.optimizer.names, recipe.optimizer.settings))
    lr, wd, lr_b, wd_b = sgd_settings(16)
    assert settings["net/block1/conv1/kernel"] == (lr, wd)
    assert settings["net/block1/norm1/beta"] == ((lr, wd) if beta_is_like_the_rest else (lr_b, wd_b))


def test_without_logit_scale_the_logits_are_nine_times_larger():
    images, _ = _data(8)
    full, plain = _model(images=images), _model("logit-scale", images=images)
    plain.load_state_dict(full.state_dict())
    x = Tensor(normalize(images))
    np.testing.assert_allclose(plain(x).numpy(), 9 * full(x).numpy(), rtol=1e-6, atol=1e-7)


def test_without_label_smoothing_the_loss_is_the_summed_cross_entropy():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(6, 10)), rng.integers(0, 10, 6)
    expected = np.sum(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(6), labels])    # float64
    plain = _model("label-smoothing").loss(Tensor(logits), labels).item()
    smoothed = _model().loss(Tensor(logits), labels).item()
    assert plain == pytest.approx(expected, rel=1e-12) and smoothed != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("without", [(), ("nesterov",)])
def test_without_nesterov_the_first_update_is_plain_momentum(without):
    """Step 1 from zero momentum buffers: buf = g + wd var; heavy ball moves by lr buf,
    Nesterov by lr (g' + m buf) = lr (1 + m) g'."""
    images, labels = _data(16)
    model = _model(images=images)
    recipe = FastRecipe(model, len(images), 16, 5, without=without)
    name = "net/block2/conv2/kernel"
    before = _params(model)[name].numpy().copy()
    recipe.train_step(normalize(images), labels)
    p = _params(model)[name]
    lr, wd = recipe.optimizer.settings[recipe.optimizer.names.index(name)]
    f32 = np.float32
    g = np.asarray(p.grad) + f32(wd) * before
    step = g if without else g + f32(0.85) * g
    np.testing.assert_allclose(p.numpy(), before - f32(lr * recipe.optimizer.lr_lambda(0)) * step, rtol=0, atol=1e-7)
    assert recipe.optimizer.nesterov is (not without)


def test_without_lookahead_no_average_starts():
    images, labels = _data()
    hyp = {"ema": {"start_epochs": 0, "decay_base": 0.95, "decay_pow": 3.0, "every_n_steps": 1}}
    for without, averaged in (((), True), (("lookahead",), False)):
        recipe = FastRecipe(_model(images=images), len(images), 16, 3, hyp=hyp, without=without)
        for _ in range(3):
            recipe.train_step(normalize(images[:16]), labels[:16])
        assert (recipe.lookahead is not None) is averaged and ("lookahead" in recipe.state_dict()) is averaged


def test_without_alternating_flip_each_epoch_flips_by_fresh_coins():
    images, _ = _data(64)
    base = base_flips(64, 0)
    parities = []
    for epoch in range(3):
        coins = random_flips(64, epoch, 0)
        expected = flip_left_right(flip_left_right(images, base), coins)     # translate 0: flips only
        np.testing.assert_array_equal(epoch_images(images, epoch, 0, pad=0, alternating=False), expected)
        parities.append(base ^ coins)
    # neither the same flips every epoch nor their alternation: a coin per image and epoch
    assert 0 < np.sum(parities[0] != parities[1]) < 64 and 0 < np.sum(parities[1] != parities[2]) < 64
    assert abs(np.mean(parities) - 0.5) < 0.15


@pytest.mark.parametrize("without, pad, alternating", [
    ((), 2, True), (("translate",), 0, True), (("alternating-flip",), 2, False)])
def test_the_runs_input_follows_the_switches(without, pad, alternating):
    images, labels = _data()
    batches = training_batches(images, labels, 16, 0, without)
    assert (batches.pad, batches.alternating, batches.flip) == (pad, alternating, True)


def _args(train_dir, max_steps, without):
    return argparse.Namespace(train_dir=str(train_dir), max_steps=max_steps, batch_size=16, seed=0, epochs=3,
                              log_every=1, summary_every=100, checkpoint_every=1000, max_to_keep=5,
                              backend="numpy", without=without)


def test_the_set_is_recorded_refused_on_resume_and_rebuilt_at_evaluation(tmp_path):
    images, labels = _data()
    without = ["logit-scale", "gelu"]
    run = train_fast(_args(tmp_path, 2, without), images, labels, model=_model(*without))
    path = latest_checkpoint(str(tmp_path))
    assert checkpoint.load(path)[1]["without"] == ["gelu", "logit-scale"]
    for other in ([], ["gelu"]):
        with pytest.raises(SystemExit, match=r"without=\['gelu', 'logit-scale'\], this run has without="):
            train_fast(_args(tmp_path, 4, other), images, labels, model=_model(*other))
    precision, step, _ = evaluate_fast(path, images, labels, tta_level=0, model=_model(*without))
    assert step == 2 and precision == evaluate(run.model, images, labels, tta_level=0)
    with pytest.raises(ValueError):                     # what a full model would have: refused, not loaded
        _model("frozen-bn-scale").load_state_dict(checkpoint.unflatten(checkpoint.load(path)[0])["model"])
