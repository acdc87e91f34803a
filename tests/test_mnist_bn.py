"""The seed's question made concrete on the two MNIST models: what does BN do at inference?

- inference mode: an example's logits do not depend on the batch around it (alone = in a batch);
- training mode: they do (batch statistics);
- evaluation never changes the moving statistics (bit-identical before and after);
- inference normalises with moving_mean / moving_variance: the fc-bn model's output equals a
  float64 numpy closed form built from them, and not the one built from the batch statistics;
- training updates them by the documented rule (decay 0.99, population variance);
- fc-bn's loss is mean xent + 0.001 * the l2_loss of every weight and bias.
"""
import numpy as np
import pytest

from tinybn.models.mnist import MODELS, cnn_bn, fc_bn
from tinybn.ops.basic import reduce_mean
from tinybn.ops.losses import sparse_softmax_cross_entropy_with_logits
from tinybn.optim import GradientDescent
from tinybn.tensor import Tensor, no_grad
from tinybn.tasks.mnist import evaluate

EPS = 1e-3


def images(rng, n):
    return rng.random((n, 28, 28, 1), dtype=np.float32)


def layers(model):
    return dict(model.net.named_children())


def with_moving_statistics(model, rng):
    """Moving statistics far from their 0 / 1 start, as after real training."""
    state = model.state_dict()
    for name, a in state.items():
        if name.endswith("moving_mean"):
            a[...] = 0.3 * rng.standard_normal(a.shape)
        elif name.endswith("moving_variance"):
            a[...] = rng.uniform(0.05, 2.0, a.shape)
        elif name.endswith(("gamma", "beta")):
            a += 0.2 * rng.standard_normal(a.shape).astype(a.dtype)
    return model.load_state_dict(state)


def logits_of(model, x):
    with no_grad():
        return model(Tensor(x)).numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_inference_logits_do_not_depend_on_the_batch(name):
    rng = np.random.default_rng(1)
    model = with_moving_statistics(MODELS[name](rng=rng), rng).eval()
    x = images(rng, 12)
    batch = logits_of(model, x)
    other = logits_of(model, np.concatenate([x[5:6], images(rng, 7)]))     # example 5 among strangers
    scale = np.abs(batch).max()
    for i in (0, 5, 11):
        alone = logits_of(model, x[i:i + 1])
        np.testing.assert_allclose(alone[0], batch[i], rtol=1e-5, atol=1e-6 * scale)
        assert alone[0].argmax() == batch[i].argmax()
    np.testing.assert_allclose(other[0], batch[5], rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_logits_depend_on_the_batch(name):
    rng = np.random.default_rng(2)
    model = MODELS[name](rng=rng)
    x = images(rng, 8)
    a = logits_of(model, x)[0]
    b = logits_of(model, np.concatenate([x[:1], images(rng, 7)]))[0]    # the same example 0, other company
    assert np.abs(a - b).max() > 1e-2 * np.abs(a).max()
    assert np.array_equal(logits_of(model, x)[0], logits_of(model, x)[0])   # same batch, same output


@pytest.mark.parametrize("name", list(MODELS))
def test_evaluation_never_changes_the_moving_statistics(name):
    rng = np.random.default_rng(3)
    model = with_moving_statistics(MODELS[name](rng=rng), rng)
    x, labels = (rng.random((20, 28, 28, 1)) * 255).astype(np.uint8), rng.integers(0, 10, 20).astype(np.int32)
    before = model.state_dict()
    result = evaluate(model, [("eval", (x, labels, "eval")), ("train", (x[:7], labels[:7], "train"))], 8, 0)
    after = model.state_dict()
    assert set(result) == {"eval", "train"} and model.training      # back in training mode afterwards
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), k
    logits_of(model, x[:8].astype(np.float32) / 255)                  # the control: training mode moves them
    moved = model.state_dict()
    assert any(not np.array_equal(before[k], moved[k]) for k in before if k.endswith("moving_mean"))


def bn_closed_form(x, state, prefix, mean=None, var=None):
    """gamma * (x - mean) / sqrt(var + eps) + beta in float64; moving statistics unless given."""
    mean = state[prefix + "moving_mean"] if mean is None else mean
    var = state[prefix + "moving_variance"] if var is None else var
    return state[prefix + "gamma"] * (x - mean) / np.sqrt(var.astype(np.float64) + EPS) + state[prefix + "beta"]


def fc_closed_form(x, state, batch_statistics=False):
    x = x.reshape(len(x), -1).astype(np.float64)
    stats = (lambda h: dict(mean=h.mean(0), var=h.var(0))) if batch_statistics else (lambda h: {})
    h = bn_closed_form(x, state, "net/bn_input/", **stats(x))
    h = h @ state["net/hidden/kernel"] + state["net/hidden/bias"]
    h = np.maximum(bn_closed_form(h, state, "net/bn_hidden/", **stats(h)), 0)
    return h @ state["net/logits/kernel"] + state["net/logits/bias"], bn_closed_form(x, state, "net/bn_input/")


def test_inference_on_the_training_set_uses_the_moving_statistics():
    rng = np.random.default_rng(4)
    model = fc_bn(rng=rng)
    opt = GradientDescent(list(model.named_parameters()), 0.5)
    raw = (rng.random((64, 28, 28, 1)) ** 3 * 255).astype(np.uint8)
    labels = rng.integers(0, 10, 64).astype(np.int32)
    x = raw.astype(np.float32) * np.float32(1 / 255)
    for step in range(6):                                   # train on the set: moving statistics move
        batch = slice(step % 4 * 16, step % 4 * 16 + 16)
        loss = model.loss(model(Tensor(x[batch])), labels[batch])
        model.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    assert np.abs(state["net/bn_input/moving_mean"]).max() > 1e-3          # no longer the initial values

    model.eval()
    expected, first_bn = fc_closed_form(x, state)
    with no_grad():
        ours_first_bn = layers(model)["bn_input"](layers(model)["flatten"](Tensor(x))).numpy()
    np.testing.assert_allclose(ours_first_bn, first_bn, rtol=1e-5, atol=1e-5 * np.abs(first_bn).max())
    ours = logits_of(model, x)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    with_batch_stats, _ = fc_closed_form(x, state, batch_statistics=True)
    assert np.abs(ours - with_batch_stats).max() > 1e-2 * np.abs(expected).max()
    # the CLI's evaluation of the training set counts exactly these predictions
    precision = evaluate(model, [("train", (raw, labels, "train"))], 16, 6)["train"]
    assert precision == np.mean(expected.argmax(1) == labels)


def test_training_updates_moving_statistics_by_the_documented_rule():
    rng = np.random.default_rng(5)
    model = fc_bn(rng=rng)
    x = images(rng, 32)
    logits_of(model, x)
    flat = x.reshape(32, -1).astype(np.float64)
    bn = layers(model)["bn_input"]
    assert bn.decay == 0.99 and bn.moving_variance_rule == "population" and bn.epsilon == EPS
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.01 * flat.mean(0), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.99 + 0.01 * flat.var(0), rtol=1e-6)


def test_fc_bn_loss_is_xent_plus_l2_of_every_weight_and_bias():
    rng = np.random.default_rng(6)
    model = fc_bn(rng=rng, dtype=np.float64)
    state = model.state_dict()
    state["net/hidden/bias"][...] = rng.standard_normal(1024)
    state["net/logits/bias"][...] = rng.standard_normal(10)
    model.load_state_dict(state)
    x, labels = images(rng, 16).astype(np.float64), rng.integers(0, 10, 16)
    logits = model(Tensor(x))
    loss = model.loss(logits, labels)
    xent = reduce_mean(sparse_softmax_cross_entropy_with_logits(labels, logits)).item()
    l2 = sum(np.sum(state[f"net/{layer}/{p}"] ** 2) / 2 for layer in ("hidden", "logits") for p in ("kernel", "bias"))
    assert loss.item() == pytest.approx(xent + 0.001 * l2, rel=1e-12)
    model.zero_grad()
    loss.backward()
    # BN after the hidden layer subtracts the batch mean: its bias feels only the L2 term
    np.testing.assert_allclose(layers(model)["hidden"].bias.grad, 0.001 * state["net/hidden/bias"], atol=1e-12)
    named = dict(model.named_parameters())
    assert named["net/bn_hidden/gamma"].grad is not None and len(model.weight_decay) == 4


def test_cnn_bn_layers_and_shapes():
    model = cnn_bn(rng=np.random.default_rng(7))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {"net/conv1/kernel": (5, 5, 1, 32), "net/conv1/bias": (32,),
                      "net/conv2/kernel": (5, 5, 32, 64), "net/conv2/bias": (64,),
                      "net/bn/gamma": (3136,), "net/bn/beta": (3136,),
                      "net/fc1/kernel": (3136, 1024), "net/fc1/bias": (1024,),
                      "net/fc2/kernel": (1024, 10), "net/fc2/bias": (10,),
                      "net/bn/moving_mean": (3136,), "net/bn/moving_variance": (3136,)}
    assert model.regularization_loss() is None
    assert logits_of(model, images(np.random.default_rng(8), 3)).shape == (3, 10)
