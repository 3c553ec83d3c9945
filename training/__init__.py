"""Training package: corpora, splits, dataset, augmentation, frontend, models, loss, metrics, CLI.

May import: numpy, soundfile, soxr, omegaconf everywhere; torch, lightning and
audiomentations only in the modules that train (never from ``training.corpora``,
``training.splits`` or ``training.metrics``, which evaluation uses without torch).
Imports ``contract`` (the shared constants, geometry and names) and ``engine``
(the runtime it produces models for); ``engine`` and ``realtime`` never import it.
"""
