"""Models: the CIFAR-10 tutorial CNN and its batch-normalized variants."""
