"""Keras 3 export (tinybn.export.keras_model): the saved .keras file gives tinybn's logits."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from export_models import calibrated, images, logits, max_scaled_diff, write_run
from tinybn.export import keras_model, save_keras
from tinybn.export.__main__ import main as export_main
from tinybn.export.keras_model import lrn_layer_class
from tinybn.models import cifar10

# Keras 3's own save path calls np.array on TF tensors, which NumPy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.mark.parametrize("name", ["tutorial", "tutorial_bn", "bn", "cnn_bn"])
def test_saved_keras_model_gives_tinybn_logits(name, tmp_path):
    model, shape = calibrated(name)
    x = images(shape, 3)
    path = tmp_path / f"{name}.keras"
    save_keras(model, path, shape)
    loaded = keras.saving.load_model(str(path))
    theirs, ours = np.asarray(loaded(x, training=False)), logits(model, x)
    assert theirs.shape == ours.shape == (3, 10)
    assert max_scaled_diff(theirs, ours) <= 1e-5, np.abs(theirs - ours).max()
    # every tinybn layer is there under its own name
    assert [layer.name for layer in loaded.layers[1:]] == [n for n, _ in model.net.named_children()]


def test_lrn_layer_is_tf_lrn_and_round_trips_its_config():
    layer = lrn_layer_class()(3, 2.0, 0.25, 0.6, name="norm")
    x = np.random.default_rng(0).normal(0, 2, (2, 4, 4, 9)).astype(np.float32)
    expected = tf.nn.local_response_normalization(x, 3, 2.0, 0.25, 0.6).numpy()
    np.testing.assert_array_equal(np.asarray(layer(x)), expected)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (again.depth_radius, again.bias, again.alpha, again.beta) == (3, 2.0, 0.25, 0.6)


def test_cli_keras_mnist_run(tmp_path, capsys):
    model, shape = calibrated("cnn_bn")
    write_run(tmp_path / "run", model, "mnist", "cnn_bn", step=5)
    out = tmp_path / "cnn.keras"
    export_main(["keras", "--train-dir", str(tmp_path / "run"), "--out", str(out)])
    assert "(cnn_bn, step 5, raw weights)" in capsys.readouterr().out
    x = images(shape, 2)
    theirs = np.asarray(keras.saving.load_model(str(out))(x, training=False))
    assert max_scaled_diff(theirs, logits(model, x)) <= 1e-5


def test_refusals_are_one_line_and_keep_files(tmp_path):
    model = cifar10.tutorial()
    with pytest.raises(ValueError, match=r"must end in \.keras"):
        save_keras(model, tmp_path / "m.h5", (24, 24, 3))
    existing = tmp_path / "m.keras"
    existing.write_bytes(b"mine")
    write_run(tmp_path / "run", model, "cifar", "tutorial")
    with pytest.raises(SystemExit, match=r"^error: .*m\.keras exists; choose a new file name$"):
        export_main(["keras", "--train-dir", str(tmp_path / "run"), "--out", str(existing), "--no-ema"])
    assert existing.read_bytes() == b"mine"
    with pytest.raises(SystemExit, match=r"^error: no checkpoint in "):
        export_main(["keras", "--train-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.keras")])
    with pytest.raises(ValueError, match="SequentialClassifier"):
        keras_model(object(), (24, 24, 3))
