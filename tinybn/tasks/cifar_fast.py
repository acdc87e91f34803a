"""The fast CIFAR-10 run: --model fast trained by airbench's recipe (fast_recipe.FastRecipe) inside
the house's TrainingRun (checkpoints, train.csv, resuming, Ctrl-C), and its evaluation with TTA.

    train_fast(args, images, labels)        train to the end of --epochs (or --max-steps, if fewer)
    evaluate_fast(path, images, labels)     precision@1 of a checkpoint, airbench's tta_level 2

args are the cifar trainer's flags plus `epochs` (airbench: 9.9; the epoch count is a flag). The
whitening kernel is computed from the first 5000 training images (airbench's count) when a run
starts; a resumed run takes it from the checkpoint, where it is a buffer of the model. A
checkpoint holds the model (its weights are the Lookahead average after every epoch's end), the
SGD momentum buffers, the average's shadows once it has started ("lookahead"), and the input
position (epoch, batch). One process only for now: under mpiexec the run refuses to start.

python -m tinybn.train cifar --model fast [--epochs N] and python -m tinybn.eval cifar --model fast
reach these through tasks/cifar.py's train() and evaluate().

Tasks floor: imports training, data, models, optim, backend and core; never the command lines.
"""
import numpy as np

from .. import backend, checkpoint
from ..data.fast_augment import FastBatches, normalize
from ..distributed import world as world_lib
from ..lookahead import LookaheadAverage
from ..models.cifar_fast import HYPERPARAMETERS, fast
from ..training import TRAIN_CSV_FIELDS, TrainingRun, load_checkpoint_or_fail
from .fast_recipe import FastRecipe, evaluate


class FastRun(TrainingRun):
    """The fast model, FastRecipe's optimizer and schedule, and the Lookahead shadows in checkpoints."""

    resume_keys = ("task", "model", "batch_size", "seed", "epochs")

    def __init__(self, args, images, world=None, model=None):
        world = world or world_lib.world()
        if world.size > 1:
            raise SystemExit("error: --model fast trains in one process for now (run it without mpiexec)")
        model = model or fast(rng=np.random.default_rng(args.seed))      # tests give a narrow one
        model.initialize_whitening(normalize(images[:HYPERPARAMETERS["whitening_images"]]))
        self.recipe = None

        def make_optimizer(named):
            self.recipe = FastRecipe(model, len(images), args.batch_size, args.epochs)
            return self.recipe.optimizer
        super().__init__(args, model, make_optimizer, num_examples=len(images), world=world)

    def meta(self):
        a = self.args
        return {"task": "cifar", "model": "fast", "batch_size": a.batch_size, "seed": a.seed, "epochs": a.epochs}

    def run_state(self, queue_state=None):
        state = super().run_state(queue_state)
        if self.recipe.lookahead is not None:
            state["lookahead"] = self.recipe.lookahead.state_dict()
        return state

    def load_run_state(self, state):
        super().load_run_state(state)
        self.recipe.lookahead = None
        if "lookahead" in state:
            self.recipe.lookahead = LookaheadAverage(self.model).load_state_dict(state["lookahead"])

    def train_step(self, images, labels):
        """(loss per example, accuracy, the learning rate of the non-BN-bias parameters)."""
        lr = self.recipe.optimizer.settings[-1][0] * self.recipe.optimizer.lr_lambda(self.step)
        loss, accuracy = self.recipe.train_step(backend.device_array(images), backend.device_array(labels))
        return loss, accuracy, lr

    def write_summaries(self, writer, loss, accuracy, lr):
        """The loss and learning rate (the tutorial's summaries name the tutorial's layers)."""
        writer.scalar("loss", loss, self.step)
        writer.scalar("learning_rate", lr, self.step)


def train_fast(args, images, labels, model=None):
    """Train a FastRun of --train-dir on (images uint8 (N, 32, 32, 3), labels) to the last step of
    --epochs, or to --max-steps when that comes first."""
    run = FastRun(args, images, model=model)
    args.max_steps = min(args.max_steps, run.recipe.total_steps)
    if run.step >= args.max_steps:
        run.say(f"nothing to do: the checkpoint is at step {run.step} >= {args.max_steps}")
        return run
    try:
        queue = FastBatches(images, labels, args.batch_size, seed=args.seed, state=run.queue_state)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    with queue, run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_events() as writer:
        run.fit(queue, csv, writer)
    return run


def evaluate_fast(path, images, labels, tta_level=None, model=None, batch_size=500):
    """(precision@1, step) of the fast checkpoint at `path` on uint8 images, with TTA; `model`:
    an untrained model of the checkpoint's shapes (default fast())."""
    arrays, meta = load_checkpoint_or_fail(path)
    if meta.get("task") != "cifar" or meta.get("model") != "fast":
        raise SystemExit(f"error: {path} is not a checkpoint of --model fast (meta: {meta})")
    model = model or fast()
    try:
        model.load_state_dict(checkpoint.unflatten(arrays).get("model", {}))
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    return evaluate(model.to_backend(), images, labels, tta_level, batch_size), meta["step"]
