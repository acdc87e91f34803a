"""CIFAR-10 weights to and from TensorFlow checkpoints under the tutorial's variable names.

    write_tf_checkpoint(model, directory, ema=None, step=0)   -> "<directory>/model.ckpt-<step>"
    read_tf_checkpoint(path)                                   -> {TF name: array}
    import_tf_checkpoint(path, train_dir, model_name=None)     -> the tinybn checkpoint written

The checkpoints are TF1 name-based ones (tf.compat.v1.train.Saver): the keys are the
variable names themselves ("conv1/weights", ..., "softmax_linear/biases", "global_step"),
as cifar10_train.py's MonitoredTrainingSession writes them and cifar10_eval.py's Saver
reads them. (An object-based tf.train.Checkpoint would key them by object path,
".../.ATTRIBUTES/VARIABLE_VALUE", which the tutorial's Saver cannot restore.) The
moving-average shadows are "<name>/ExponentialMovingAverage", the names
tf.train.ExponentialMovingAverage.apply() gives them; variables_to_restore() maps each
trainable variable to its shadow, which tinybn's evaluation does by default.

Import reads such a checkpoint (the tutorial's own, or one written here), recognises the
model from its variable names (tinybn.models.export gives the mapping) and writes a
tinybn training checkpoint, "model.ckpt-<global_step>.npz", into a new --train-dir that
`python -m tinybn.eval cifar --train-dir` evaluates as it is, and that `python -m
tinybn.train cifar --train-dir` (batch size 128 and seed 0, the defaults) continues from
the TF run's global step: the optimizer is stored at that step, the input queue starts anew. What a TF run also keeps and
tinybn has no use for, the loss averages of _add_loss_summaries ("<loss>/avg"), optimizer
slots, is left out and counted. Arrays are copied, never transposed: both sides are NHWC
with HWIO filters.

TensorFlow is imported inside the functions, so tinybn imports without it.
"""
import os

import numpy as np

from .. import checkpoint
from ..checkpoint_manager import CheckpointManager
from ..models import cifar10 as cifar_models
from ..models.export import from_tf_variables, tf_name, to_tf_variables
from ..tasks.cifar import EMA_SUFFIX, make_optimizer
from ..training import latest_checkpoint

GLOBAL_STEP = "global_step"
PREFIX = "model.ckpt"        # cifar10_train.py's file names: model.ckpt-<step>.index, .data-*
TUTORIAL_BATCH_SIZE = 128    # cifar10.py's --batch_size default


def tf_variables(model, ema=None):
    """{TF name: array} of `model`'s weights and, from `ema` ({tinybn name + EMA_SUFFIX:
    array}, a training checkpoint's "ema" state), their shadows under TF's names."""
    variables = to_tf_variables(model)
    if ema:
        for name, _ in model.named_parameters():
            if name + EMA_SUFFIX not in ema:
                raise ValueError(f"write_tf_checkpoint: ema has no moving average of {name!r}")
            variables[tf_name(name) + EMA_SUFFIX] = np.asarray(ema[name + EMA_SUFFIX])
    return variables


def write_tf_checkpoint(model, directory, ema=None, step=0):
    """Write `model` (and its shadows `ema`) as "<directory>/model.ckpt-<step>" with TF's Saver,
    plus the "checkpoint" state file that tf.train.latest_checkpoint reads; the prefix.
    A directory that already holds a TF checkpoint is refused (ValueError): nothing is replaced."""
    variables = tf_variables(model, ema)
    state_file = os.path.join(directory, "checkpoint")
    if os.path.lexists(state_file):
        raise ValueError(f"write_tf_checkpoint: {directory} already holds a TF checkpoint ({state_file}); "
                         "choose a new directory")
    import tensorflow as tf
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, f"{PREFIX}-{int(step)}")
    graph = tf.Graph()
    with graph.as_default():
        var_list = {name: tf.compat.v1.Variable(value, name=name, trainable=False)
                    for name, value in variables.items()}
        var_list[GLOBAL_STEP] = tf.compat.v1.Variable(np.int64(step), name=GLOBAL_STEP, trainable=False)
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, prefix, write_meta_graph=False)


def read_tf_checkpoint(path):
    """{variable name: array} of the TF checkpoint at `path` (a prefix, or a directory with a
    "checkpoint" state file: its newest); a path TF cannot read is a ValueError in one line."""
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(os.fspath(path))
        return {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())}
    except (tf.errors.OpError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"read_tf_checkpoint: cannot read a TF checkpoint at {path}: {message}") from None


def model_names():
    """{model name: [its TF variable names]} of the CIFAR-10 models."""
    return {name: [tf_name(k) for k in build().state_dict()] for name, build in cifar_models.MODELS.items()}


def recognise_model(variables, model_name=None):
    """The CIFAR-10 model whose every variable `variables` holds (or check `model_name`'s)."""
    candidates = model_names()
    if model_name is not None:
        if model_name not in candidates:
            raise ValueError(f"import_tf_checkpoint: unknown model {model_name!r}; one of {sorted(candidates)}")
        candidates = {model_name: candidates[model_name]}
    found = [name for name, names in candidates.items() if all(n in variables for n in names)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"import_tf_checkpoint: the checkpoint holds the variables of {found}; pass model_name")
    nearest = min(candidates, key=lambda m: sum(n not in variables for n in candidates[m]))
    missing = [n for n in candidates[nearest] if n not in variables]
    raise ValueError(f"import_tf_checkpoint: not a checkpoint of {sorted(candidates)}: the nearest, "
                     f"{nearest!r}, lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")


def tinybn_state(variables, model_name=None):
    """(model name, model, {tinybn name + EMA_SUFFIX: shadow} or None, step, [names left out])
    of the TF variables `variables`. Without every shadow the ema is None (evaluate with --no-ema)."""
    name = recognise_model(variables, model_name)
    model = cifar_models.MODELS[name]()
    own = set(model_names()[name])
    from_tf_variables(model, {k: v for k, v in variables.items() if k in own})
    params = [p for p, _ in model.named_parameters()]
    shadows = {p + EMA_SUFFIX: variables.get(tf_name(p) + EMA_SUFFIX) for p in params}
    ema = None if any(v is None for v in shadows.values()) else shadows
    used = own | {GLOBAL_STEP} | ({tf_name(p) + EMA_SUFFIX for p in params} if ema else set())
    step = int(np.asarray(variables.get(GLOBAL_STEP, 0)))
    return name, model, ema, step, sorted(k for k in variables if k not in used)


def import_tf_checkpoint(path, train_dir, model_name=None):
    """Read the TF checkpoint at `path` into a tinybn training checkpoint in `train_dir` (which
    must hold no checkpoint yet). Returns (tinybn checkpoint path, model name, step, ema kept,
    names left out)."""
    variables = read_tf_checkpoint(path)
    name, model, ema, step, left_out = tinybn_state(variables, model_name)
    if os.path.lexists(train_dir) and not os.path.isdir(train_dir):
        raise ValueError(f"import_tf_checkpoint: {train_dir} is not a directory")
    if latest_checkpoint(train_dir) is not None:
        raise ValueError(f"import_tf_checkpoint: {train_dir} already holds a tinybn checkpoint; "
                         "choose a new directory")
    # the optimizer at the TF run's global step, so that `python -m tinybn.train cifar` with the
    # tutorial's batch size and the default seed resumes the run (the tutorial's SGD keeps no slots)
    optimizer = make_optimizer(name, list(model.named_parameters()), TUTORIAL_BATCH_SIZE)
    optimizer.iterations = step
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if ema is not None:
        state["ema"] = ema
    meta = {"task": "cifar", "model": name, "batch_size": TUTORIAL_BATCH_SIZE, "seed": 0, "replicas": 1,
            "sync_bn": False, "imported_from": os.path.abspath(os.fspath(path))}
    saved = CheckpointManager(train_dir).save(step, checkpoint.flatten(state), meta)
    return saved, name, step, ema is not None, left_out
