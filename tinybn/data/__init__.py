"""Datasets and input pipelines: tinybn.data.cifar10 (reader, download, queue), image preprocessing."""
