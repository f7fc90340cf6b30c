"""Torch datasets over a prepared (cached) task, with each initialization's input normalization.

Images come out of the cache as uint8; here they become float in [0, 1], are
repeated to the encoder's number of input channels and normalized with the mean and
std that the initialization's catalogue entry declares. Evaluation loaders never
shuffle and never drop the last batch, so every test image is scored exactly once.

Two ways to batch a dataset, which give the same batches for a seed:

- :func:`make_loader`: torch's ``DataLoader`` (host memory; workers and pinned memory
  on request). Its shuffle does not depend on ``num_workers``: with persistent workers
  torch draws the iterator's base seed only in the first epoch, so :class:`_EpochShuffle`
  draws it in the later ones, as a fresh single-process iterator does.
- :class:`DeviceBatches`: the run's whole cache copied to a device once
  (:class:`DeviceCache`; on CUDA when it fits in ``DEVICE_CACHE_FRACTION`` of the free
  memory, :func:`device_cache_plan`), batches gathered there by index, no DataLoader.
  Its order comes from torch's own ``RandomSampler``/``BatchSampler`` on the same
  generator, after the int64 base seed the DataLoader's iterator draws each epoch, so
  each batch holds the same images in the same order: images and masks on the device,
  detection targets (small) on the host as the loader gives them, the cache indices
  (int64, on the host: feature reuse and the metrics read them there) third.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

DEVICE_CACHE_CHOICES = ("auto", "off")
DEVICE_CACHE_FRACTION = 0.5  # of the device's free memory, for the cache (the rest: model, activations)
_COPY_CHUNK = 256  # images per host -> device copy (a memmap is never read whole into host memory)


class Normalize:
    """uint8 (N, H, W) batch -> normalized float (N, C, H, W)."""

    def __init__(self, mean: list[float], std: list[float], channels: int):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"normalization has {len(mean)} means for {channels} channels")
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = images_u8.float().div_(255.0).unsqueeze(1)
        x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class SegmentationDataset(Dataset):
    """(image uint8 HxW, mask uint8 HxW, index) for the given cache indices."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: list[int]):
        self.images = images
        self.masks = masks
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return (
            torch.from_numpy(np.array(self.images[j])),
            torch.from_numpy(np.array(self.masks[j])),
            j,
        )

    def __getitems__(self, positions: list[int]) -> list[tuple]:
        """The items at ``positions`` (a batch, as torch's DataLoader asks for them), read
        with one indexed copy per array instead of one per image: the same items as
        ``__getitem__``; x1.5 the loader's images/s at 64 px (a replayed linear step is a
        few ms, so there the loader's share shows). Arrays that are not NumPy arrays (bench
        perf's per-sample DICOM reader) are read item by item."""
        if not (isinstance(self.images, np.ndarray) and isinstance(self.masks, np.ndarray)):
            return [self[i] for i in positions]
        rows = [self.indices[i] for i in positions]
        images = torch.from_numpy(self.images[rows]).unbind(0)
        masks = torch.from_numpy(self.masks[rows]).unbind(0)
        return list(zip(images, masks, rows))


class DetectionDataset(Dataset):
    """(image uint8 HxW, {"boxes": float (M,4) xyxy at the cache size}, index)."""

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], indices: list[int]):
        self.images = images
        self.boxes = boxes
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        boxes = torch.as_tensor(np.asarray(self.boxes[j], dtype=np.float32).reshape(-1, 4))
        return torch.from_numpy(np.array(self.images[j])), {"boxes": boxes}, j


class _EpochShuffle(RandomSampler):
    """``RandomSampler`` for a ``DataLoader`` with persistent workers: from the second
    epoch on it first draws the int64 base seed that a fresh iterator draws (and a
    persistent one does not), so the order is the one of ``num_workers=0``."""

    def __init__(self, data_source, generator: torch.Generator):
        super().__init__(data_source, generator=generator)
        self._epochs = 0

    def __iter__(self):
        if self._epochs:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self._epochs += 1
        yield from super().__iter__()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    num_workers: int = 0,
    collate_fn=None,
    pin_memory: bool = False,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    persistent = num_workers > 0
    sampler = _EpochShuffle(dataset, generator) if train and persistent else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if sampler is None else None,
        sampler=sampler,
        drop_last=False,  # never drop images (design §8.4)
        num_workers=num_workers,
        generator=generator,
        persistent_workers=persistent,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
    )


def _arrays(dataset) -> dict:
    """The cache arrays behind a dataset of this module: images, and masks or boxes."""
    if isinstance(dataset, SegmentationDataset):
        return {"images": dataset.images, "masks": dataset.masks}
    if isinstance(dataset, DetectionDataset):
        return {"images": dataset.images, "boxes": dataset.boxes}
    raise TypeError(f"no device batches for a {type(dataset).__name__} (only SegmentationDataset "
                    "and DetectionDataset)")  # fmt: skip


def device_cache_bytes(dataset) -> int:
    """Bytes a :class:`DeviceCache` of ``dataset``'s arrays takes on the device."""
    arrays = _arrays(dataset)
    return sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for k, a in arrays.items() if k != "boxes")


def device_cache_plan(setting: str, dataset, device: torch.device,
                      fraction: float = DEVICE_CACHE_FRACTION) -> tuple[bool, str]:  # fmt: skip
    """(whether the run's batches come from a :class:`DeviceCache`, why / why not).

    ``auto``: on CUDA when the cache (images, masks) fits in ``fraction`` of the
    device's free memory (``torch.cuda.mem_get_info`` plus what torch's allocator holds
    unused, measured after the model is on the device); ``off``: never.
    """
    if setting not in DEVICE_CACHE_CHOICES:
        raise ValueError(f"--device-cache must be one of {', '.join(DEVICE_CACHE_CHOICES)}, got {setting!r}")
    if setting == "off":
        return False, "turned off (--device-cache off)"
    if device.type != "cuda":
        return False, f"on {device.type} the batches come from host memory (a device cache only on CUDA)"
    try:
        need = device_cache_bytes(dataset)
    except TypeError as e:
        return False, str(e)
    free, _total = torch.cuda.mem_get_info(device)
    # memory torch's caching allocator holds for this process but does not use (an earlier
    # run of a sweep in this process) is free for the cache too
    free += max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    budget = int(free * fraction)
    what = f"the cache ({need / 2**30:.2f} GiB)"
    where = f"{fraction:.0%} of the {free / 2**30:.1f} GiB free on {device}"
    if need > budget:
        return False, f"{what} does not fit in {where}"
    return True, f"{what} fits in {where}"


def _to_device(array, device: torch.device) -> torch.Tensor:
    """A (memmapped) array copied to ``device`` in chunks, with its own dtype."""
    n = len(array)
    first = torch.from_numpy(np.array(array[:1]))  # np.array: a writable copy (the cache may be read-only)
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=device)
    for s in range(0, n, _COPY_CHUNK):
        out[s:s + _COPY_CHUNK].copy_(torch.from_numpy(np.array(array[s:s + _COPY_CHUNK])))
    return out


class DeviceCache:
    """One run's cache on a device, copied once: images (N, H, W), and masks (N, H, W)
    for segmentation or, for detection, the boxes as float32 (M, 4) tensors kept on the
    host (the loss step and the metrics take them from there, as from the loader)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                 boxes: list[torch.Tensor] | None = None):  # fmt: skip
        if (masks is None) == (boxes is None):
            raise ValueError("a DeviceCache has masks (segmentation) or boxes (detection)")
        self.images, self.masks, self.boxes = images, masks, boxes

    @classmethod
    def of(cls, dataset, device: torch.device) -> DeviceCache:
        """The arrays behind ``dataset`` (a Segmentation- or DetectionDataset) on ``device``."""
        arrays = _arrays(dataset)
        images = _to_device(arrays["images"], device)
        if "masks" in arrays:
            return cls(images, masks=_to_device(arrays["masks"], device))
        boxes = [torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4)) for b in arrays["boxes"]]
        return cls(images, boxes=boxes)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        tensors = [self.images] + ([self.masks] if self.masks is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rows: torch.Tensor, indices: torch.Tensor) -> tuple:
        """The batch of cache rows ``rows`` (on the device); ``indices``: the same, on the host.

        Of the collate function's type: a list (torch's ``default_collate`` of the
        segmentation items), a tuple (``detection_collate``)."""
        images = self.images.index_select(0, rows)
        if self.masks is not None:
            return [images, self.masks.index_select(0, rows), indices]
        return images, [{"boxes": self.boxes[j].clone()} for j in indices.tolist()], indices


class DeviceBatches:
    """``make_loader(dataset, batch_size, train=, seed=)``'s batches, gathered from a
    :class:`DeviceCache` on its device instead of read through a ``DataLoader``.

    The order comes from torch's own samplers, as in the DataLoader: a ``BatchSampler``
    (``drop_last=False``) over a ``RandomSampler`` on the generator (``seed``) when
    ``train``, else over a ``SequentialSampler``, iterated lazily; each ``iter()`` is one
    epoch and first draws the int64 base seed that the DataLoader's iterator draws from
    the same generator. So the generator sees the same draws at the same points (a
    ``RandomSampler`` also draws a second, unused ``randperm`` as it runs out), and each
    batch holds the same images. ``dataset`` is the head's dataset over the same cache
    (its ``indices`` are the cache rows; ``len(loader.dataset)`` as for a DataLoader).
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, seed: int, cache: DeviceCache):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.cache = dataset, cache
        self.indices = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        if len(self.indices) and not 0 <= int(self.indices.min()) <= int(self.indices.max()) < len(cache):
            raise IndexError(f"cache indices outside the device cache of {len(cache)} images")
        self.batch_size, self.train = int(batch_size), bool(train)
        self.generator = torch.Generator().manual_seed(seed)
        positions = range(len(self.indices))
        sampler = RandomSampler(positions, generator=self.generator) if self.train else SequentialSampler(positions)
        self.batch_sampler = BatchSampler(sampler, self.batch_size, drop_last=False)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the iterator's base seed
        for positions in self.batch_sampler:
            rows = self.indices[torch.as_tensor(positions, dtype=torch.int64)]
            yield self.cache.batch(rows.to(self.cache.device, non_blocking=True), rows)
