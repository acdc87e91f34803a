"""TF checkpoints in and out (tinybn.export.tf_checkpoint) against TensorFlow itself.

tf_run() is what TF's cifar10_train.py leaves behind, built with TF1's API: the tutorial's
variables by scope (conv1/weights ...), global_step, the weights' moving averages
(ExponentialMovingAverage(0.9999, global_step).apply) and the loss average of
_add_loss_summaries, saved by tf.compat.v1.train.Saver. Its logits, from TF's own forward of
inference() with the raw weights and with the shadows, are the reference.
"""
import numpy as np
import pytest
import tensorflow as tf

from export_models import images, logits, shadows, write_run
from tinybn import checkpoint
from tinybn.data import cifar10 as cifar_data
from tinybn.eval import main as eval_main
from tinybn.export import import_tf_checkpoint, read_tf_checkpoint, write_tf_checkpoint
from tinybn.export.__main__ import main as export_main
from tinybn.models import cifar10
from tinybn.tasks.cifar import restore_model
from tinybn.training import latest_checkpoint

v1 = tf.compat.v1
SHAPES = [("conv1", (5, 5, 3, 64)), ("conv2", (5, 5, 64, 64)), ("local3", (2304, 384)),
          ("local4", (384, 192)), ("softmax_linear", (192, 10))]


def inference(x, w):
    """cifar10.py's inference() on the variables w[name] (a dict of tensors)."""
    lrn = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    conv = lambda x, s: tf.nn.relu(tf.nn.conv2d(x, w[f"{s}/weights"], [1, 1, 1, 1], "SAME") + w[f"{s}/biases"])  # noqa
    pool = lambda x: tf.nn.max_pool2d(x, 3, 2, "SAME")    # noqa: E731
    x = tf.nn.lrn(pool(conv(x, "conv1")), **lrn)         # pool1, norm1
    x = pool(tf.nn.lrn(conv(x, "conv2"), **lrn))         # norm2, pool2
    x = tf.reshape(x, [tf.shape(x)[0], -1])
    x = tf.nn.relu(tf.matmul(x, w["local3/weights"]) + w["local3/biases"])
    x = tf.nn.relu(tf.matmul(x, w["local4/weights"]) + w["local4/biases"])
    return tf.matmul(x, w["softmax_linear/weights"]) + w["softmax_linear/biases"]


def tf_graph(seed=0):
    """(variables by name, ema, global_step) of the tutorial in the default graph."""
    v1.set_random_seed(seed)
    variables = {}
    for scope, shape in SHAPES:
        with v1.variable_scope(scope):
            stddev = {"conv1": 0.05, "conv2": 0.05, "softmax_linear": 1 / 192.0}.get(scope, 0.04)   # the tutorial's
            weights = v1.truncated_normal_initializer(stddev=stddev)
            variables[f"{scope}/weights"] = v1.get_variable("weights", shape, initializer=weights)
            biases = v1.random_uniform_initializer(0.0, 0.05)
            variables[f"{scope}/biases"] = v1.get_variable("biases", shape[-1:], initializer=biases)
    step = v1.train.get_or_create_global_step()
    ema = v1.train.ExponentialMovingAverage(0.9999, step)
    return variables, ema, step


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory):
    """(checkpoint prefix, x, TF logits raw, TF logits of the shadows, eval images, their shadow logits)."""
    folder = tmp_path_factory.mktemp("tf_run")
    x = images((24, 24, 3), 4)
    test_images = np.random.default_rng(5).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    eval_images = np.concatenate([b for b, _ in cifar_data.EvalBatches(test_images, np.zeros(24, np.int32), 8)])
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        variables, ema, step = tf_graph()
        apply = ema.apply(list(variables.values()))
        loss = tf.identity(tf.reduce_sum(inference(x, variables)), name="total_loss")
        loss_avg = v1.train.ExponentialMovingAverage(0.9, name="avg").apply([loss])
        sess.run(v1.global_variables_initializer())
        sess.run([step.assign(1234), apply, loss_avg])
        # the weights move on after the shadows took their value: shadow != weight
        sess.run([v.assign(v * tf.random.uniform(v.shape, 0.8, 1.2, seed=1)) for v in variables.values()])
        sess.run(apply)
        shadow = {name: ema.average(v) for name, v in variables.items()}
        image_in = v1.placeholder(tf.float32, [None, 24, 24, 3])
        raw, averaged, eval_logits = sess.run([inference(x, variables), inference(x, shadow),
                                               inference(image_in, shadow)], {image_in: eval_images})
        prefix = v1.train.Saver().save(sess, str(folder / "model.ckpt"), global_step=step)
    return prefix, x, raw, averaged, test_images, eval_logits


def test_imported_tf_checkpoint_gives_tfs_logits(tf_run, tmp_path):
    prefix, x, raw, averaged, _, _ = tf_run
    assert np.abs(raw - averaged).max() > 100 * np.abs(raw).max() * 1e-5    # it tells shadows from weights
    saved, name, step, with_ema, left_out = import_tf_checkpoint(prefix, tmp_path / "run")
    assert (name, step, with_ema) == ("tutorial", 1234, True)
    assert left_out == ["total_loss/avg"]                # the loss average: no tinybn counterpart
    model, meta = restore_model(saved)
    assert meta["step"] == 1234 and meta["model"] == "tutorial"
    arrays, _ = checkpoint.load(saved)      # the optimizer at the global step: training resumes there
    assert arrays["optimizer::iterations"] == 1234 and (meta["batch_size"], meta["seed"]) == (128, 0)
    assert np.abs(logits(model, x) - averaged).max() <= 1e-5
    model, _ = restore_model(saved, use_ema=False)
    assert np.abs(logits(model, x) - raw).max() <= 1e-5


def write_cifar_test_set(folder, test_images):
    """CIFAR-10's binary layout with `test_images` (N, 32, 32, 3) as test_batch.bin, labels 0..9."""
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    labels = np.arange(len(test_images)) % 10
    records = np.concatenate([labels[:, None].astype(np.uint8),
                              test_images.transpose(0, 3, 1, 2).reshape(len(test_images), -1)], axis=1)
    records.tofile(d / "test_batch.bin")
    for i in range(1, 6):
        records.tofile(d / f"data_batch_{i}.bin")
    return folder, labels


def test_eval_cli_on_an_imported_tf_run(tf_run, tmp_path, capsys):
    prefix, _, _, _, test_images, eval_logits = tf_run
    export_main(["import-tf", "--tf-checkpoint", str(prefix.rsplit("/", 1)[0]), "--train-dir", str(tmp_path / "run")])
    assert "model.ckpt-1234.npz (tutorial, step 1234, with moving averages; 1 other TF variables left out)" \
        in capsys.readouterr().out
    data, labels = write_cifar_test_set(tmp_path / "data", test_images)
    eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(tmp_path / "run"),
               "--eval-dir", str(tmp_path / "ev"), "--batch-size", "8", "--no-download"])
    expected = np.mean(np.argmax(eval_logits, axis=1) == labels)
    assert f"step 1234: precision @ 1 = {expected:.4f} (24 examples, moving-average weights)" in capsys.readouterr().out


def test_exported_checkpoint_restores_in_tf_as_cifar10_eval_does(tmp_path):
    model = cifar10.tutorial(rng=np.random.default_rng(2))
    ema = shadows(model)
    prefix = write_tf_checkpoint(model, tmp_path / "tf", ema=ema, step=77)
    assert tf.train.latest_checkpoint(str(tmp_path / "tf")) == prefix
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_tensor("global_step") == 77
    for name, value in model.state_dict().items():
        tf_name = name[len("net/"):].replace("/kernel", "/weights").replace("/bias", "/biases")
        np.testing.assert_array_equal(reader.get_tensor(tf_name), value)
        np.testing.assert_array_equal(reader.get_tensor(tf_name + "/ExponentialMovingAverage"),
                                      ema[name + "/ExponentialMovingAverage"])
    x = images((24, 24, 3), 3)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        variables, ema_tf, _ = tf_graph()
        v1.train.Saver(ema_tf.variables_to_restore()).restore(sess, prefix)    # cifar10_eval.py's restore
        tf_logits = sess.run(inference(x, variables))
    state = model.state_dict()
    state.update({k[:-len("/ExponentialMovingAverage")]: v for k, v in ema.items()})
    model.load_state_dict(state)
    assert np.abs(logits(model, x) - tf_logits).max() <= 1e-5


def test_round_trip_through_the_command_line(tf_run, tmp_path, capsys):
    prefix = tf_run[0]
    export_main(["import-tf", "--tf-checkpoint", prefix, "--train-dir", str(tmp_path / "run")])
    export_main(["tf-checkpoint", "--train-dir", str(tmp_path / "run"), "--out", str(tmp_path / "tf")])
    assert "model.ckpt-1234 (tutorial, step 1234, with moving averages)" in capsys.readouterr().out
    before, after = read_tf_checkpoint(prefix), read_tf_checkpoint(tmp_path / "tf")
    assert set(before) - set(after) == {"total_loss/avg"}
    for name, value in after.items():
        np.testing.assert_array_equal(value, before[name])


def test_refusals_are_one_line_and_keep_what_is_there(tf_run, tmp_path):
    prefix = tf_run[0]
    with pytest.raises(SystemExit, match=r"^error: read_tf_checkpoint: cannot read a TF checkpoint at .*nowhere"):
        export_main(["import-tf", "--tf-checkpoint", str(tmp_path / "nowhere"), "--train-dir", str(tmp_path / "r")])
    model = cifar10.bn()
    write_run(tmp_path / "mine", model, "cifar", "bn")
    mine = open(latest_checkpoint(tmp_path / "mine"), "rb").read()
    with pytest.raises(SystemExit, match=r"^error: import_tf_checkpoint: .*already holds a tinybn checkpoint"):
        export_main(["import-tf", "--tf-checkpoint", prefix, "--train-dir", str(tmp_path / "mine")])
    assert open(latest_checkpoint(tmp_path / "mine"), "rb").read() == mine
    with pytest.raises(SystemExit, match=r"^error: import_tf_checkpoint: not a checkpoint of .*'bn'"):
        export_main(["import-tf", "--tf-checkpoint", prefix, "--train-dir", str(tmp_path / "r"), "--model", "bn"])
    write_tf_checkpoint(model, tmp_path / "tf")
    with pytest.raises(SystemExit, match=r"^error: write_tf_checkpoint: .*already holds a TF checkpoint"):
        export_main(["tf-checkpoint", "--train-dir", str(tmp_path / "mine"), "--out", str(tmp_path / "tf")])
    assert read_tf_checkpoint(tmp_path / "tf")["global_step"] == 0
