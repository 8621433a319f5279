"""Training and evaluating models (apart from the run path): the trainer, recipes, metrics, pseudo-labels and
the data set readers with their synthetic augmentations."""
