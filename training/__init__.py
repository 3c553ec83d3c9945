"""Training package: corpora, splits, dataset, augmentation, frontend, models, loss, metrics, CLI.

May import: numpy, soundfile, soxr, omegaconf everywhere; torch, lightning and
audiomentations only in the modules that train (never from ``training.audio``,
``training.corpora``, ``training.splits``, ``training.metrics`` or
``training.config``, which the engine and the daemon use without torch).
"""
