"""The tasks: what each command line trains or evaluates, built on tinybn.training.

    cifar   the TensorFlow CIFAR-10 tutorial's three models (CifarRun, the --watch evaluation)
    mnist   the two MNIST batch-norm models (MnistRun, precision@1 with BN in inference mode)
    resnet  the ResNet-V2 benchmark of python -m tinybn.bench resnet
    report  the evaluation report by class and its PNGs (python -m tinybn.eval cifar --report/--plot)

Each builds its models, optimizers and inputs and holds its run class and its evaluation.
Tasks floor: imports training and everything below it (data, models, optim, nn, ops, core);
never the command lines (train, eval, bench, cli_flags), which call the tasks after they
have checked the flags.
"""
