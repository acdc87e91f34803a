"""Datasets and input pipelines: tinybn.data.cifar10 (reader, download, queue), image preprocessing.

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data."""
