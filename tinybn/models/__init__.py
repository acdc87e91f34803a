"""Models: the CIFAR-10 tutorial CNN and its batch-normalized variants.

Floor: models (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root and models."""
