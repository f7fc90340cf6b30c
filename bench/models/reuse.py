"""Encoder-feature reuse: a frozen encoder's outputs computed once, the head trained on them.

Under ``linear`` and ``frozen`` the encoder has no gradients and BatchNorm in eval mode
(:mod:`bench.models.protocols`), and downstream training has no augmentation, so the
encoder's output for an image is the same in every epoch. Instead of running the
encoder on every batch of every epoch:

- :meth:`FeatureStore.build` runs the real training step's forward once per image (the
  head's own ``loss_step``, in train mode, without gradients) and keeps what the encoder
  returned, by cache index. It keeps only what the model reads
  (``encoder_outputs_used`` of the model: the linear probe reads C5 only), never the
  input itself (smp's first "feature" *is* the input, handed through at replay). The
  features keep the dtype the encoder produced (float32 on CPU, bf16 under CUDA
  autocast), so the head sees exactly the values it would see without reuse. They live
  in memory, or, on CPU, in a disk-backed array (``numpy.memmap`` in a temporary folder
  under the preprocessing cache, removed after the run) when they exceed the memory
  budget (``$CXRBENCH_FEATURE_MEMORY_GB``, default half of the available memory). On a
  GPU the encoder is faster than a disk read of its features, so there a run over the
  budget does not reuse (:class:`ReuseSkipped`, its reason in the record);
- :class:`ReplayEncoder` stands in for the encoder (:func:`replaced_encoder`): it returns
  the stored features of the batch's cache indices, which :class:`ReplayLoader` hands
  it before each batch (every head's batch carries the cache indices third);
- :func:`reuse_decision` says whether a run reuses: frozen protocols, unless
  ``--no-feature-reuse``.

The state dict of a model under replay has no encoder tensors (the encoder is not a
submodule then), so ``fit``'s best-weights copy is of the trained part only; the
encoder, untouched, is put back when the block ends. bench.perf's reuse figures use the
same classes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto, whose bar calls iter() on a loader once more (test_reuse)

from bench.models.device import autocast
from bench.models.protocols import FROZEN_PROTOCOLS

MEMORY_ENV = "CXRBENCH_FEATURE_MEMORY_GB"


def reuse_decision(protocol: str, enabled: bool) -> tuple[bool, str]:
    """(whether a run reuses encoder features, why / why not)."""
    if protocol not in FROZEN_PROTOCOLS:
        return False, f"{protocol} trains the encoder"
    if not enabled:
        return False, "turned off (--no-feature-reuse)"
    return True, f"{protocol}: frozen encoder, no augmentation"


def memory_budget() -> int:
    """Bytes of features kept in memory before they go to a disk-backed array."""
    value = os.environ.get(MEMORY_ENV)
    if value:
        try:
            gb = float(value)
        except ValueError:
            raise ValueError(f"${MEMORY_ENV} must be a number of GiB, got {value!r}") from None
        return int(gb * 2**30)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) * 1024 // 2
    except (OSError, KeyError, ValueError, IndexError):
        return 4 * 2**30


def storage_for(nbytes: int, device_type: str, budget: int | None = None) -> tuple[str | None, str]:
    """Where ``nbytes`` of features go: ``("memory", "")``; over the budget, ``("disk", why)``
    on the CPU (a disk-backed array), ``(None, why)`` on a GPU (no reuse: the encoder
    recomputes faster than a disk reads back)."""
    budget = memory_budget() if budget is None else budget
    if nbytes <= budget:
        return "memory", ""
    why = (f"the features need {nbytes / 2**30:.1f} GiB, over the memory budget of {budget / 2**30:.1f} GiB "
           f"(${MEMORY_ENV})")  # fmt: skip
    if device_type != "cpu":
        return None, f"{why}; on {device_type} the encoder runs every epoch instead of reading them from disk"
    return "disk", f"{why}: kept in a disk-backed array"


class ReuseSkipped(RuntimeError):
    """Reuse would not pay here (features over the memory budget on a GPU); the run goes on without."""


class _Captured(Exception):
    """Raised by the capture hook: the encoder's output is all :meth:`FeatureStore.build` needs."""

    def __init__(self, args, output):
        super().__init__()
        self.args, self.output = args, output


def _structure(args, output, used) -> tuple[str, list, list]:
    """(kind, keys, passthrough keys) of an encoder output: a list/tuple (smp) or a mapping
    (torchvision's IntermediateLayerGetter); a value that *is* the input is handed through."""
    if isinstance(output, dict):
        kind, keys = "dict", list(output)
    elif isinstance(output, list | tuple):
        kind, keys = "list", list(range(len(output)))
    else:
        kind, keys = "tensor", [0]
    values = _values(kind, output)
    passthrough = [k for k in keys if args and values[k] is args[0]]
    if used is not None:  # positions (negative from the end) of a list, keys of a mapping
        wanted = set(used) if kind == "dict" else {u % len(keys) for u in used}
        keys = [k for k in keys if k in wanted or k in passthrough]
    return kind, keys, passthrough


def _values(kind: str, output) -> dict:
    if kind == "dict":
        return dict(output)
    if kind == "list":
        return dict(enumerate(output))
    return {0: output}


class FeatureStore:
    """The encoder's outputs for a set of cache indices, each row computed once."""

    def __init__(self, kind, length, keys, passthrough, arrays, row_of, storage, spill_dir, seconds, formats=None):
        self.kind, self.length, self.keys, self.passthrough = kind, length, keys, passthrough
        self.arrays, self.row_of, self.storage = arrays, row_of, storage
        self.spill_dir, self.seconds = spill_dir, seconds
        self.formats = formats or {}  # key -> the memory format the encoder produced it in

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.arrays.values())

    @property
    def dtype(self) -> str:
        return str(next(iter(self.arrays.values())).dtype).replace("torch.", "") if self.arrays else "none"

    @classmethod
    def build(cls, model: nn.Module, loss_step, loader, device: torch.device, *, batch_size: int | None = None,
              budget: int | None = None, spill_root: Path | None = None, progress: bool = False) -> FeatureStore:  # fmt: skip
        """Run ``loss_step`` on every batch of ``loader`` (no gradients, train mode, as in
        training) up to the encoder, and keep the encoder's outputs by cache index.

        A batch shorter than ``batch_size`` (the run's) is padded to it with copies of its
        first image, so every image is encoded in a batch of the size training uses: CPU
        convolution kernels round differently for another batch size, and a full training
        batch then gets exactly the features the encoder would compute for it.
        """
        encoder = model.encoder
        used = getattr(model, "encoder_outputs_used", None)
        n_total = len(loader.dataset)
        arrays: dict = {}
        formats: dict = {}  # the encoder's memory format per output: replayed the same way
        rows: list[torch.Tensor] = []
        structure = None
        storage, spill_dir = "memory", None

        def hook(module, args, output):
            raise _Captured(args, output)

        was_training = model.training
        model.train()  # the training step's mode (the frozen encoder stays in eval)
        handle = encoder.register_forward_hook(hook)
        t0 = time.perf_counter()
        filled = 0
        try:
            bar = tqdm(loader, desc="encoder features (once)", leave=False, disable=not progress, unit="batch")
            for batch in bar:
                try:
                    with torch.no_grad(), autocast(device):
                        loss_step(model, _padded(batch, batch_size), device)
                except _Captured as c:
                    args, output = c.args, c.output
                else:
                    raise RuntimeError("feature reuse: the model's forward never called its encoder")
                if structure is None:
                    structure = _structure(args, output, used)
                    kind, keys, passthrough = structure
                    values = _values(kind, output)
                    per_image = sum(values[k][0].numel() * values[k].element_size()
                                    for k in keys if k not in passthrough)  # fmt: skip
                    storage, why = storage_for(per_image * n_total, device.type, budget)
                    if storage is None:
                        raise ReuseSkipped(why)
                    if storage == "disk":
                        spill_dir = Path(tempfile.mkdtemp(prefix="features-", dir=_spill_parent(spill_root)))
                    for k in keys:
                        if k in passthrough:
                            continue
                        v = values[k]
                        arrays[k] = _allocate((n_total, *v.shape[1:]), v.dtype, spill_dir, len(arrays))
                        formats[k] = _memory_format(v)
                kind, keys, passthrough = structure
                values = _values(kind, output)
                m = len(batch[2])
                for k in keys:
                    if k not in passthrough:
                        arrays[k][filled:filled + m] = values[k][:m].detach().to("cpu")
                rows.append(torch.as_tensor(batch[2], dtype=torch.int64))
                filled += m
        except BaseException:
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)
            raise
        finally:
            handle.remove()
            model.train(was_training)
        if structure is None:
            raise RuntimeError("feature reuse: the loader gave no batch")
        index = torch.cat(rows)
        row_of = torch.full((int(index.max()) + 1,), -1, dtype=torch.int64)
        row_of[index] = torch.arange(len(index))
        kind, keys, passthrough = structure
        length = len(_values(kind, output))
        return cls(kind, length, keys, passthrough, arrays, row_of, storage, spill_dir,
                   time.perf_counter() - t0, formats)  # fmt: skip

    def gather(self, indices: torch.Tensor, inputs: torch.Tensor):
        """The encoder's output for the images ``indices`` (``inputs`` is the encoder's input)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if len(idx) != inputs.shape[0]:
            raise RuntimeError(f"feature reuse: {inputs.shape[0]} images in the batch, "
                               f"{len(idx)} cache indices selected")  # fmt: skip
        if int(idx.max()) >= len(self.row_of) or bool((self.row_of[idx] < 0).any()):
            raise RuntimeError("feature reuse: features of a cache index that was never computed")
        rows = self.row_of[idx]
        device = inputs.device
        values = {}
        for k in self.keys:
            if k in self.passthrough:
                values[k] = inputs
            else:
                values[k] = self.arrays[k][rows].to(device, non_blocking=True)
                fmt = self.formats.get(k, torch.contiguous_format)
                if fmt is not torch.contiguous_format:  # channels_last: the decoder's kernels sum
                    values[k] = values[k].contiguous(memory_format=fmt)  # in the order they would
        if self.kind == "dict":
            return OrderedDict((k, values[k]) for k in self.keys)
        if self.kind == "tensor":
            return values[0]
        return [values.get(i) for i in range(self.length)]

    def close(self) -> None:
        """Drop the features (and their disk-backed folder)."""
        self.arrays = {}
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    def summary(self) -> dict:
        return {"storage": self.storage, "dtype": self.dtype, "bytes": self.nbytes,
                "images": int((self.row_of >= 0).sum()), "seconds": round(self.seconds, 3)}  # fmt: skip


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-d tensor laid out NHWC (and not also NCHW), else contiguous."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _padded(batch, size: int | None):
    """``batch`` (images, targets, cache indices) grown to ``size`` images by repeating its first."""
    n = len(batch[2])
    if size is None or n >= size:
        return batch
    extra = size - n

    def grow(x):
        if isinstance(x, torch.Tensor):
            return torch.cat([x, x[:1].expand(extra, *x.shape[1:])])
        return list(x) + [x[0]] * extra

    return tuple(grow(x) for x in batch)


def _spill_parent(spill_root: Path | None) -> Path:
    if spill_root is None:
        from tasks.cache import cache_root

        spill_root = cache_root()
    parent = Path(spill_root) / "features"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _allocate(shape, dtype: torch.dtype, spill_dir: Path | None, n: int) -> torch.Tensor:
    if spill_dir is None:
        return torch.empty(shape, dtype=dtype)
    # numpy has no bfloat16: its bits are kept as int16 and viewed back
    np_dtype = np.int16 if dtype == torch.bfloat16 else torch.empty((), dtype=dtype).numpy().dtype
    mm = np.lib.format.open_memmap(spill_dir / f"{n}.npy", mode="w+", dtype=np_dtype, shape=tuple(shape))
    t = torch.from_numpy(mm)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class ReplayEncoder(nn.Module):
    """Stands in for a frozen encoder: the stored features of the selected cache indices."""

    def __init__(self, store: FeatureStore):
        super().__init__()
        self.store = store
        self._indices: torch.Tensor | None = None

    def select(self, indices) -> None:
        self._indices = torch.as_tensor(indices, dtype=torch.int64)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self._indices is None:
            raise RuntimeError("feature reuse: no batch selected (iterate a ReplayLoader)")
        indices, self._indices = self._indices, None  # one batch, one forward
        return self.store.gather(indices, x)


class ReplayLoader:
    """A loader whose batches select their cache indices (third element) in a ReplayEncoder."""

    def __init__(self, loader, replay: ReplayEncoder):
        self.loader, self.replay = loader, replay
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.replay.select(batch[2])
            yield batch


def _parents(model: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    found = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if child is module]  # fmt: skip
    if not found:
        raise RuntimeError("the encoder is not a submodule of its model")
    return found


@contextlib.contextmanager
def replaced_encoder(model: nn.Module, replacement: nn.Module):
    """``model.encoder`` swapped for ``replacement`` inside the block (restored after it)."""
    encoder = model.encoder
    parents = _parents(model, encoder)
    for parent, name in parents:
        setattr(parent, name, replacement)
    try:
        yield
    finally:
        for parent, name in parents:
            setattr(parent, name, encoder)

