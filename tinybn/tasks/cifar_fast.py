"""The fast CIFAR-10 run: --model fast trained by airbench's recipe (fast_recipe.FastRecipe) inside
the house's TrainingRun (checkpoints, train.csv, resuming, Ctrl-C), and its evaluation with TTA.

    train_fast(args, images, labels)        train to the end of --epochs (or --max-steps, if fewer)
    evaluate_fast(path, images, labels)     precision@1 of a checkpoint (airbench's tta_level 2),
                                            its step, and which weights it holds
    profile_fast(args)                      the recipe's step op by op (python -m tinybn.bench
                                            profile cifar --model fast)

args are the cifar trainer's flags plus `epochs` (airbench: 9.9; the epoch count is a flag),
`without` (the components removed, models/cifar_fast.py ABLATIONS), `checkpoint_every_epoch`
(a checkpoint at each epoch's end, all kept: the points of the curve, tasks/curve.py). The
whitening kernel is computed from the first 5000 training images (airbench's count) when a run
starts; a resumed run takes it from the checkpoint, where it is a buffer of the model. A
checkpoint holds the model (its weights are the Lookahead average after every epoch's end), the
SGD momentum buffers, the average's shadows once it has started ("lookahead"), and the input
position (epoch, batch). One process only for now: under mpiexec the run refuses to start.

python -m tinybn.train cifar --model fast [--epochs N] and python -m tinybn.eval cifar --model fast
reach these through tasks/cifar.py's train() and evaluate().

Tasks floor: imports training, data, models, optim, backend and core; never the command lines.
"""
import time

import numpy as np

from .. import backend, checkpoint
from ..data.fast_augment import TRANSLATE, FastBatches, normalize
from ..distributed import world as world_lib
from ..lookahead import LookaheadAverage
from ..models.cifar_fast import HYPERPARAMETERS, check_ablations, fast
from ..profiler import profile_training
from ..training import TRAIN_CSV_FIELDS, TrainingRun, load_checkpoint_or_fail
from .curve import RunClock
from .fast_recipe import FastRecipe, evaluate


class FastRun(TrainingRun):
    """The fast model, FastRecipe's optimizer and schedule, and the Lookahead shadows in checkpoints."""

    resume_keys = ("task", "model", "batch_size", "seed", "epochs", "without")

    def __init__(self, args, images, world=None, model=None):
        world = world or world_lib.world()
        if world.size > 1:
            raise SystemExit("error: --model fast trains in one process for now (run it without mpiexec)")
        self.without = check_ablations(getattr(args, "without", None))
        # tests give a narrow model, built with the same `without`
        model = model or fast(rng=np.random.default_rng(args.seed), without=self.without)
        if "whitening" not in self.without:
            model.initialize_whitening(normalize(images[:HYPERPARAMETERS["whitening_images"]]))
        self.recipe = None
        self.clock = RunClock(args)

        def make_optimizer(named):
            self.recipe = FastRecipe(model, len(images), args.batch_size, args.epochs, without=self.without)
            return self.recipe.optimizer
        super().__init__(args, model, make_optimizer, num_examples=len(images), world=world)
        if getattr(args, "checkpoint_every_epoch", False):
            self.manager.max_to_keep = None         # the curve needs every epoch's checkpoint

    def meta(self):
        """What a resumed run must match; "without": the components removed, None for the full recipe."""
        a = self.args
        return {"task": "cifar", "model": "fast", "batch_size": a.batch_size, "seed": a.seed, "epochs": a.epochs,
                "without": list(self.without) or None}

    def checkpoint_meta(self):
        return dict(super().checkpoint_meta(), **self.clock.meta(self.step))

    def restore(self, path):
        super().restore(path)
        self.clock.resumed(path)

    def epoch_checkpoint(self, queue):
        """fit's after_step with --checkpoint-every-epoch: a checkpoint at each epoch's end (the last
        step's is fit's own); True when it wrote one, so its time is not the next step's."""
        def after_step(step):
            due = step % self.recipe.steps_per_epoch == 0 and step % self.args.checkpoint_every != 0
            if due and step < self.args.max_steps:
                self.save(queue)
                return True
            return False
        return after_step if getattr(self.args, "checkpoint_every_epoch", False) else None

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


def training_batches(images, labels, batch_size, seed, without=(), state=None):
    """The run's FastBatches: --without translate pads by 0, --without alternating-flip flips at random."""
    return FastBatches(images, labels, batch_size, seed=seed, state=state,
                       pad=0 if "translate" in without else TRANSLATE, alternating="alternating-flip" not in without)


def train_fast(args, images, labels, model=None):
    """Train a FastRun of --train-dir on (images uint8 (N, 32, 32, 3), labels) to the last step of
    --epochs, or to --max-steps when that comes first."""
    run = FastRun(args, images, model=model)
    args.max_steps = min(args.max_steps, run.recipe.total_steps)
    if run.step >= args.max_steps:
        run.say(f"nothing to do: the checkpoint is at step {run.step} >= {args.max_steps}")
        return run
    try:
        queue = training_batches(images, labels, args.batch_size, args.seed, run.without, run.queue_state)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    with queue, run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_events() as writer:
        run.fit(queue, run.clock.watching(csv), writer, after_step=run.epoch_checkpoint(queue))
    return run


def restore_fast_model(path, model=None):
    """(model, meta, weights) of the fast checkpoint at `path`; `model`: an untrained model of the
    checkpoint's shapes (default fast() without the components its meta says were removed: a ReLU
    run is evaluated with ReLUs). `weights` says what the checkpoint's weights are, for the eval
    line: the Lookahead average once it has started (epoch 3 on), else the last step's."""
    arrays, meta = load_checkpoint_or_fail(path)
    if meta.get("task") != "cifar" or meta.get("model") != "fast":
        raise SystemExit(f"error: {path} is not a checkpoint of --model fast (meta: {meta})")
    model = model or fast(without=meta.get("without") or ())
    state = checkpoint.unflatten(arrays)
    try:
        model.load_state_dict(state.get("model", {}))
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    if "lookahead" in state:
        weights = "Lookahead-averaged weights"
    elif "lookahead" in (meta.get("without") or ()):
        weights = "last step's weights (trained without Lookahead)"
    else:
        weights = "last step's weights (the Lookahead average had not started)"
    return model, meta, weights


def evaluate_fast(path, images, labels, tta_level=None, model=None, batch_size=500):
    """(precision@1, step, weights) of the fast checkpoint at `path` on uint8 images, with TTA
    (restore_fast_model)."""
    model, meta, weights = restore_fast_model(path, model)
    return evaluate(model.to_backend(), images, labels, tta_level, batch_size), meta["step"], weights


def profile_fast(args, log=print):
    """Profile args.steps steps of the fast recipe's training step: the fast model (seed --seed, its
    whitening kernel from the batch), FastRecipe's optimizer (Nesterov SGD, airbench's two groups,
    40,000 examples' schedule), one batch of N(0, 1) images (N, 32, 32, 3) float32 and uniform
    labels. args.whitening_bias: "frozen" (the step of epochs 3 on, 7 in 10: the backward stops at
    block1's first conv) or "trains" (epochs 0-2). The Lookahead update, which a run makes every
    5th step, is timed alone after the profile (the mean of 5). Returns (Profile, seconds per update)."""
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((args.batch_size, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, args.batch_size).astype(np.int32)
    model = fast(rng=np.random.default_rng(args.seed), whitening_images=images).to_backend(args.backend)
    recipe = FastRecipe(model, 40_000, args.batch_size, HYPERPARAMETERS["train_epochs"])
    model.whitening.bias.requires_grad = args.whitening_bias == "trains"
    log(f"cifar fast: batch {args.batch_size}, backend {args.backend}, whitening bias {args.whitening_bias}, "
        f"{args.warmup} warm-up steps, {args.steps} profiled")
    profile = profile_training(model, recipe.optimizer, None, images, labels, steps=args.steps, warmup=args.warmup)
    log(profile.format())
    average = LookaheadAverage(model)
    start = time.perf_counter()
    for _ in range(5):
        average.update(model, HYPERPARAMETERS["ema"]["decay_base"])
    backend.to_numpy(average.shadow[average.names[-1]])     # a GPU's queue has run the last update
    update_s = (time.perf_counter() - start) / 5
    every = HYPERPARAMETERS["ema"]["every_n_steps"]
    log(f"Lookahead update: {1e3 * update_s:.1f} ms, every {every}th step of a run "
        f"({1e3 * update_s / every:.1f} ms a step, {100 * update_s / every / profile.unprofiled_step_s:.1f}% "
        f"of the unprofiled step)")
    return profile, update_s
