"""Pretraining: producing initializations under one backbone, in the registry's checkpoint layout.

Owns the pretraining methods; so far :mod:`bench.pretrain.supervised` (multi-label
image classification on the labels a dataset has), which ``bench demo`` uses to
make its ``supervised-synth`` init. Each method trains through
:func:`bench.engine.train.fit` and writes a plain torchvision ResNet state dict that
``weights_registry.build_encoder`` loads strictly.
"""
