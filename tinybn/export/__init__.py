"""Weights in and out: TF checkpoints (the tutorial's names), Keras 3 and ONNX files.

    python -m tinybn.export tf-checkpoint --train-dir DIR --out TF_DIR     tinybn run -> TF checkpoint
    python -m tinybn.export import-tf --tf-checkpoint PATH --train-dir DIR  TF checkpoint -> tinybn run
    python -m tinybn.export keras --train-dir DIR --out model.keras
    python -m tinybn.export onnx  --train-dir DIR --out model.onnx

The API, for a model in hand (ResNet-V2 goes to ONNX through it):

    tf_checkpoint.write_tf_checkpoint(model, directory, ema, step)   tf_checkpoint.import_tf_checkpoint(...)
    keras_model.keras_model(model, input_shape)   save_keras(model, path, input_shape)
    onnx_model.onnx_model(model, input_shape)     save_onnx(model, path, input_shape)
    load_run(path)   (model with its raw weights, {shadow name: array} or None, meta) of a
                     tinybn training checkpoint (CIFAR-10 or MNIST)

The module docstrings say how each format's names and layouts map to tinybn's; the Keras and
ONNX exports run the model in inference mode (batch norm on its moving statistics) and
from the moving-average weights unless --no-ema. TensorFlow, Keras and onnx are imported only
when a function needs them. A .keras file holds tinybn's LRN layer: call
tinybn.export.register() before keras.saving.load_model reads it.

Floor: cli (tests/test_layering.py), beside the commands: imports tasks and everything below.
"""
from .. import checkpoint
from ..models import cifar10 as cifar_models
from ..models import mnist as mnist_models
from ..tasks.cifar import EMA_SUFFIX
from ..training import load_checkpoint_or_fail
from .keras_model import keras_model, register, save_keras
from .onnx_model import lrn_attributes, onnx_model, save_onnx
from .tf_checkpoint import import_tf_checkpoint, read_tf_checkpoint, write_tf_checkpoint

__all__ = ["INPUT_SHAPES", "load_run", "use_shadows", "keras_model", "register", "save_keras", "lrn_attributes",
           "onnx_model", "save_onnx", "import_tf_checkpoint", "read_tf_checkpoint", "write_tf_checkpoint"]

INPUT_SHAPES = {"cifar": (cifar_models.IMAGE_SIZE, cifar_models.IMAGE_SIZE, 3),
                "mnist": (mnist_models.IMAGE_SIZE, mnist_models.IMAGE_SIZE, 1)}


def load_run(path):
    """(model in eval mode with its raw weights, {name + EMA_SUFFIX: shadow} or None, meta) of the
    tinybn training checkpoint at `path`; anything else is a ValueError in one line."""
    arrays, meta = load_checkpoint_or_fail(path)
    task, name = meta.get("task"), meta.get("model")
    models = {"cifar": cifar_models.MODELS, "mnist": mnist_models.MODELS}.get(task, {})
    if name not in models:
        raise ValueError(f"{path} is not a CIFAR-10 or MNIST training checkpoint (meta: {meta})")
    model = models[name](bn_decay=meta["bn_decay"]) if task == "mnist" else models[name]()
    state = checkpoint.unflatten(arrays)
    model.load_state_dict(state.get("model", {}))
    return model.eval(), (state.get("ema") or None), meta


def use_shadows(model, ema):
    """Load the moving averages `ema` into `model`'s parameters (what evaluation restores)."""
    weights = model.state_dict()
    for name, _ in model.named_parameters():
        if name + EMA_SUFFIX not in ema:
            raise ValueError(f"the checkpoint has no moving average of {name!r}; use --no-ema")
        weights[name] = ema[name + EMA_SUFFIX]
    model.load_state_dict(weights)
    return model
