"""Pretraining: producing every initialization under one backbone (``bench pretrain``).

Owns the pretraining subsystem. It sits below ``bench.engine`` (which asks
:mod:`.builtin` for the built-in synthetic encoders) and above ``bench.models``:

- :mod:`.settings`: every flag, with each method's recipe defaults (recorded);
- :mod:`.methods`: one module per method (simclr, moco with MedAug positives,
  convirt, clip, supervised), each a ``Method`` with its model and training items;
- :mod:`.losses`, :mod:`.heads`, :mod:`.augment`, :mod:`.pairs`,
  :mod:`.distributed`, :mod:`.text`: the losses (global batch under DDP), projection
  and attention-pooling heads, grayscale augmentations, MedAug positive pairs, gathers,
  and the text encoders (local Hugging Face folders or a builtin BERT);
- :mod:`.encoder`: the torchvision ResNet every method trains and exports;
- :mod:`.train`: the loop (resume, NaN stop, checkpoints, the user-catalogue entry);
- :mod:`.builtin`: each method pretrained once on the built-in synthetic corpus;
- :mod:`.probe`: a linear probe of frozen features (the demo's pretraining section).

The data it reads comes from the top-level ``corpora`` package.
"""
