"""python -m tinybn.train cifar|mnist: the command line of training, argparse and calls.

The flags are checked (cli_flags), the data read, and only then is --train-dir touched:
tinybn.tasks.cifar and tinybn.tasks.mnist build the run and train it (tinybn.training).

Command-line floor: imports tasks, cli_flags, distributed and the floors below; nothing imports it.
"""
import argparse
import time

from . import cli_flags
from .distributed import world as world_lib
from .models import cifar10 as cifar_models
from .models import cifar_fast as fast_models
from .models import mnist as mnist_models
from .tasks import cifar, mnist

CIFAR_DESCRIPTION = """python -m tinybn.train cifar: the TensorFlow CIFAR-10 tutorial's training, on tinybn.

One step, as cifar10_train.py runs it:
    images, labels = shuffle queue (worker threads, already preprocessed)
    loss = mean(sparse_softmax_cross_entropy(model(images), labels)) + weight decay
    loss.backward(); optimizer.step()        # lr read at the pre-increment global step
    ema.apply(params)                        # num_updates = the incremented global step

Schedules: the tutorial models use plain SGD with lr 0.1 x 0.1 every 350 epochs
(decay_steps = int(50000 / batch_size * 350), staircase); the seed's BN model uses
Adam with 0.04 x 0.9 every 1000 steps (staircase).

State in --train-dir: model.ckpt-<step>.npz (model, optimizer slots, EMA shadows,
input-queue position; written atomically, the last --max-to-keep kept), events
files for TensorBoard, and train.csv. Running again with the same --train-dir
resumes at the saved step with the same optimizer, EMA and data-order state;
the steps after that checkpoint that a crashed run had logged are dropped from
train.csv and, by a SessionLog START event, from TensorBoard's view.
Ctrl-C or SIGTERM (what batch schedulers send before SIGKILL) finishes the step
in flight, saves a checkpoint and exits with status 0; a second one aborts at once.

Data parallel, as cifar10_multi_gpu_train.py's towers: `mpiexec -n K python -m
tinybn.train cifar ...` (or srun, or mpiexec with a host file) runs K replicas,
each on --batch-size images of the global batch of K x --batch-size; the tower
gradients are averaged, the update is the same on every rank, decay_steps is
divided by K, and only rank 0 writes --train-dir. --sync-bn normalises with
cross-replica batch statistics; --check-replicas N verifies every N steps that
the replicas are bitwise equal. See tinybn/distributed/__init__.py.

--model fast is airbench94's recipe on full 32x32 images (tinybn/models/cifar_fast.py and
tinybn/tasks/fast_recipe.py): a frozen patch-whitening layer, GELU, label smoothing, Nesterov
SGD on a triangular schedule, a Lookahead average of the weights, alternating flips and 2 px
translations; --epochs (default 9.9) sets the length, --batch-size defaults to 1024, and
--max-steps stops it earlier. --without COMPONENT (repeatable) trains it with that component
removed, for the ablation table (what each removal is: the model's docstring);
--checkpoint-every-epoch keeps a checkpoint of each epoch's end for the curve of precision@1
against wall time (python -m tinybn.eval cifar --every-checkpoint, --time-curve). One process,
its augmentation in the training loop: it takes neither --num-threads nor the data-parallel flags.
"""

# the flags --model fast does not take, and why
FAST_REFUSES = {"num_threads": "its augmentation runs in the training loop, without worker threads",
                "sync_bn": "it trains in one process", "check_replicas": "it trains in one process"}

MNIST_DESCRIPTION = """python -m tinybn.train mnist (and python -m tinybn.eval mnist): the two MNIST BN models.

One step: a shuffled minibatch (a new permutation each epoch, deterministic for --seed)
-> model in training mode (BN normalises with the batch's statistics and updates its
moving ones) -> mean xent (+ fc-bn's L2) -> backward -> cnn_bn: Adam(1e-3), fc-bn:
SGD(0.5); the learning rate is constant.

Evaluation (every --eval-every steps, and always at the end): the model in eval()
mode under no_grad, so BN normalises with its moving statistics and never changes
them, on the evaluation set and on the training set, printing
    step S: eval set test[8000:10000] (2000 examples, BN in inference mode): precision @ 1 = 0.9850
    step S: train set test[0:8000] (8000 examples, BN in inference mode): precision @ 1 = 0.9950
to stdout and to eval.csv and the event files in --train-dir.

Which examples train and which evaluate: --train-split and --eval-split, each a file
set with an optional Python-style index range, as TFDS writes splits:
    train | test (t10k is a synonym) | NAME[START:STOP], e.g. test[:8000], test[8000:], test[-2000:]
Defaults are the official split (--train-split train --eval-split test). A range
outside the file set, or an empty one, is an error. Overlapping training and
evaluation ranges are allowed, with a warning on stderr that says how many
examples they share (the evaluation is then not of held-out data).

State in --train-dir: model.ckpt-<step>.npz (model with BN moving statistics,
optimizer slots, input position; the last --max-to-keep kept), events files,
train.csv and eval.csv. The same --train-dir resumes exactly where it stopped (the
rows and events of steps after its checkpoint are dropped); Ctrl-C or SIGTERM saves
a checkpoint and exits, as `python -m tinybn.train cifar`.
"""


def cifar_parser(sub):
    p = sub.add_parser("cifar", help="CIFAR-10 (the TensorFlow tutorial)", description=CIFAR_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       parents=[cli_flags.training_flags("runs/cifar10_train", max_steps=1000000),
                                cli_flags.input_flags("holds cifar-10-batches-bin/ (default: $TINYBN_DATA "
                                                      "or ~/.cache/tinybn); downloaded there when absent",
                                                      "fail instead of downloading missing data")])
    p.add_argument("--model", default="tutorial", choices=sorted(cifar_models.MODELS) + sorted(fast_models.MODELS))
    p.add_argument("--num-threads", type=int, default=None, help="preprocessing worker threads (default 2)")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"--model fast: epochs to train (default {fast_models.HYPERPARAMETERS['train_epochs']})")
    p.add_argument("--without", action="append", default=None, choices=fast_models.ABLATIONS, metavar="COMPONENT",
                   help="--model fast: train without this component of the recipe (repeatable; the ablation "
                        f"table of tinybn/models/cifar_fast.py): {', '.join(fast_models.ABLATIONS)}")
    p.add_argument("--checkpoint-every-epoch", action="store_true",
                   help="--model fast: also a checkpoint at each epoch's end, all kept (the points of "
                        "python -m tinybn.eval cifar --every-checkpoint's curve)")
    p.set_defaults(batch_size=None)      # 128, or --model fast's 1024 (cifar_defaults)
    return p


def cifar_defaults(args):
    """The defaults that depend on --model, and the flags a model does not take refused."""
    if args.model == "fast":
        cli_flags.refuse_flags(args, "--model fast", FAST_REFUSES)
        hyp = fast_models.HYPERPARAMETERS
        args.batch_size = hyp["batch_size"] if args.batch_size is None else args.batch_size
        args.epochs = hyp["train_epochs"] if args.epochs is None else args.epochs
        if not 0 < args.epochs < float("inf"):
            raise SystemExit(f"error: --epochs must be a positive number, got {args.epochs}")
    else:
        cli_flags.refuse_flags(args, f"--model {args.model}", {
            "epochs": "it trains to --max-steps", "without": "the ablations are of --model fast's recipe",
            "checkpoint_every_epoch": "it has no epochs: use --checkpoint-every and --max-to-keep"})
        args.batch_size = 128 if args.batch_size is None else args.batch_size
        args.num_threads = 2 if args.num_threads is None else args.num_threads


def mnist_parser(sub):
    p = sub.add_parser("mnist", help="MNIST: the BN CNN or the BN fully-connected network",
                       description=MNIST_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       parents=[cli_flags.training_flags("runs/mnist_train", max_steps=3000),
                                cli_flags.mnist_input_flags()])
    p.add_argument("--model", default="cnn_bn", choices=list(mnist_models.MODELS))
    p.add_argument("--train-split", default="train", help="examples to train on (default: train)")
    p.add_argument("--eval-split", default="test", help="examples to evaluate on (default: test)")
    p.add_argument("--bn-decay", type=float, default=mnist_models.BN_DECAY, help="BN moving-average decay")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps too (0: only at the end)")
    return p


def train_cifar(args):
    args.started = time.time()      # the curve's zero (tasks/curve.py): before the data is read
    cifar_defaults(args)
    cli_flags.check_train_flags(args)
    # the data before --train-dir: a data error must not leave a new, empty --train-dir behind
    images, labels = cifar.load_split("train", args)
    cli_flags.check_batch_size(args.batch_size, len(images), "the CIFAR-10 training set")
    return cifar.train(args, images, labels)


def train_mnist(args):
    cli_flags.check_train_flags(args)
    if args.eval_every < 0:
        raise SystemExit("error: --eval-every must be >= 0 (0: only at the end)")
    if not 0.0 <= args.bn_decay <= 1.0:
        raise SystemExit(f"error: --bn-decay must be in [0, 1], got {args.bn_decay}")
    train_set, eval_set = mnist.load_sets(args)
    cli_flags.check_batch_size(args.batch_size, len(train_set[1]), f"--train-split {train_set[2]}")
    return mnist.train(args, train_set, eval_set)


def main(argv=None):
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.train", description="Train a tinybn model.")
    sub = parser.add_subparsers(dest="task", required=True)
    cifar_parser(sub).set_defaults(run=train_cifar)
    mnist_parser(sub).set_defaults(run=train_mnist)
    args = parser.parse_args(argv)
    # under mpiexec, an error on one rank ends the job instead of leaving the others waiting
    with world_lib.abort_on_error(world_lib.world()):
        cli_flags.run_command(args)


if __name__ == "__main__":
    main()
