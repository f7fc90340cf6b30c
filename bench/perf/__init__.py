"""``bench perf``: measuring throughput against the compute limit (design §11, issue 12).

Owns: measuring throughput against the compute limit. One process measures, side by
side, the training step of the real model on tensors already on the device (the
limit), the real path (cache, dataset, loader, normalization, loss step), the data
path alone, the per-sample 1024x1024 DICOM path of GLoRIA / MGCA, the limit of
encoder-feature reuse for the frozen protocols, evaluation, the cache build and the
pretraining methods, with the peak host and device memory of each path; from those
figures, the standard table's wall time on the device. Ratios, not absolute numbers,
are what hold on a shared machine.

Layer: above :mod:`bench.engine` (it builds models and data exactly as
:func:`bench.engine.runner.execute` does) and :mod:`bench.pretrain`; only the CLI
(``bench/cli/perf.py``) imports it.

Modules: :mod:`.settings` (what to measure), :mod:`.meter` (timing, interleaved rounds,
peak memory), :mod:`.setup` (the run's model, data and loaders), :mod:`.training`
(compute, pipeline, loader), :mod:`.dicom` (the per-sample DICOM path, cache build),
:mod:`.reuse` (the feature-reuse limit, and where the real reuse path plugs in),
:mod:`.evaluation`, :mod:`.pretraining`, :mod:`.projection` (the standard table's
hours), :mod:`.report` (markdown and JSON) and
:mod:`.measure` (:func:`measure`, the whole command).
"""

from bench.perf.measure import measure
from bench.perf.settings import PerfSettings

__all__ = ["PerfSettings", "measure"]
