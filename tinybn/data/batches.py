"""Input batches that know no data set: every example once, in order.

    SequentialBatches(images, labels, batch_size, transform)   (transform(images[b]), labels[b])
                                                                for consecutive slices b

The last batch holds what is left, with its real size (no padding, no repeats), so an
evaluation over these batches counts every example exactly once.

Data floor: imports numpy only; the data set modules (cifar10, mnist) build on it.
"""
import numpy as np


class SequentialBatches:
    """Sequential (images, labels) batches, images through `transform`; the last one may be smaller."""

    def __init__(self, images, labels, batch_size, transform):
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int32)
        self.batch_size, self.transform = batch_size, transform
        self.num_examples = len(images)

    def __len__(self):
        return -(-self.num_examples // self.batch_size)

    def __iter__(self):
        for start in range(0, self.num_examples, self.batch_size):
            stop = start + self.batch_size
            yield self.transform(self.images[start:stop]), self.labels[start:stop]
