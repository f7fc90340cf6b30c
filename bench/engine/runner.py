"""One run end to end: data, initialization, model, training, test, run record.

``execute(cfg)`` is what ``bench run`` (and every sweep executor) calls; it reads top
to bottom like torchvision's ``references/detection/train.py::main``:

1. the task (``tasks.get_task``) and its data root (real, or the built-in synthetic set);
2. the initialization (``bench.engine.weights.load_weights``: registry + leakage rule);
3. the prepared cache (``TaskSpec.prepare``), the split and the nested label fraction;
4. a ``running`` record on disk;
5. the head for the protocol's output kind (``bench.models.heads``): model, loaders,
   ``bench.engine.train.fit`` with early stopping on validation, then the test;
6. the final record (``complete``, ``nan_loss`` or ``failed``) with example predictions
   and, on request, the test submission beside it.

Input problems (missing data, unknown init, leakage, a checkpoint that does not fit)
are raised before anything is written, and :func:`preflight` checks what costs nothing
to check before any data is prepared or weights are loaded: the settings, that ``--out``
is a writable folder, the device, that an init is a catalogue name or an existing file,
that a checkpoint or split file exists, and that the preprocessing cache can be written
(or already holds a cache of this task and size). Once training starts an interrupted or broken run is always
visible on disk and never half-written; an optional side file (examples, submission)
that cannot be written is noted in the record (``artifact_errors``, with its path) and
never fails a finished run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.engine import artifacts
from bench.engine.config import RunConfig, check_settings
from bench.engine.dataroot import resolve_data_root
from bench.engine.records import RECORD_VERSION, env_info, record_path, write_json_atomic
from bench.engine.train import NanLossError, fit, seed_everything
from bench.engine.weights import LeakageError, load_weights
from bench.models.datasets import DeviceBatches, DeviceCache, device_cache_plan, make_loader
from bench.models.device import channels_last, compile_model, loader_workers, resolve_device
from bench.models.heads import make_head
from bench.models.protocols import count_parameters
from bench.models.reuse import (
    FeatureStore,
    ReplayEncoder,
    ReplayLoader,
    ReuseSkipped,
    replaced_encoder,
    reuse_decision,
)
from bench.util import writable_dir_problem
from tasks.splits import fraction_indices, split_indices

__all__ = ["LeakageError", "OutputError", "RunFailed", "execute", "preflight", "primary_metric"]


class OutputError(ValueError):
    """A folder the run must write into (``--out``, the cache) cannot be written (bad input)."""


class RunFailed(RuntimeError):
    """Training started and then failed; the record on disk says why."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def primary_metric(task: str, protocol: str) -> str:
    from tasks import get_task

    return get_task(task).primary_metric(protocol)


def base_record(cfg: RunConfig) -> dict:
    return {
        "record_version": RECORD_VERSION,
        "run_id": cfg.run_id,
        "status": "running",
        "task": cfg.task,
        "init": cfg.init_label,
        "init_spec": cfg.init,
        "protocol": cfg.protocol,
        "fraction": cfg.fraction,
        "seed": cfg.seed,
        "arch": cfg.arch,
        "image_size": cfg.image_size,
        "primary_metric": cfg.spec.primary_metric(cfg.protocol),
        "hparams": cfg.hparams(),
        "config": cfg.to_dict(),
    }


def execute(cfg: RunConfig) -> dict:
    """Run one configuration and return its final record (also written to ``cfg.out``)."""
    t_start = time.perf_counter()
    device = preflight(cfg)
    if device.type == "cpu":
        torch.backends.cudnn.benchmark = False
    task = cfg.spec
    record = base_record(cfg)
    out_path = record_path(cfg.out, cfg.run_id)

    root, synthetic = resolve_data_root(cfg.task, cfg.data_root, progress=cfg.progress)
    seed_everything(cfg.seed)  # the random init and the decoder are drawn from this seed
    encoder, winfo = load_weights(cfg, synthetic=synthetic)
    prepared = task.prepare(root, cfg.image_size, strict=cfg.strict, progress=cfg.progress,
                            **task.option_values(cfg))  # fmt: skip
    splits = split_indices(prepared, split_file=cfg.split_file)
    train_idx = fraction_indices(prepared, splits["train"], cfg.fraction)
    for name in ("train", "val", "test"):
        if not splits[name]:
            raise ValueError(f"the {name} split of {root} is empty; the dataset is too small")

    record.update(
        weights=winfo,
        data=_data_section(root, synthetic, prepared),
        split=_split_section(cfg, splits, train_idx),
        env=env_info(str(device)),
        timing={"started": _now()},
    )
    try:
        write_json_atomic(out_path, record)
    except OSError as e:  # a full disk or a folder gone read-only: nothing trained yet, nothing lost
        raise OutputError(f"cannot write the run record {out_path}: {e.strerror or e}") from e

    try:
        seed_everything(cfg.seed)
        result = _train_and_test(cfg, prepared, encoder, winfo, splits, train_idx, device)
        record["timing"].update(result.pop("timing_train"))
        record.update(result)
        record["status"] = "complete"
    except NanLossError as e:
        record.update(status="nan_loss", error=str(e), history=getattr(e, "history", []))
    except KeyboardInterrupt:
        record.update(status="failed", error="interrupted (KeyboardInterrupt)")
        _finish(record, out_path, t_start)
        raise
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised as RunFailed
        record.update(status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=20))  # fmt: skip
    try:
        _finish(record, out_path, t_start)
    except OSError as e:  # the record itself: say what finished, so nothing is lost
        metrics = json.dumps(record.get("metrics"), default=str)
        raise RunFailed(f"run {cfg.run_id} ended {record['status']}, but its record could not be "
                        f"written to {out_path} ({e}); test metrics: {metrics}", record) from e  # fmt: skip
    if record["status"] != "complete":
        raise RunFailed(f"run {cfg.run_id} {record['status']}: {record.get('error')}", record)
    return record


def preflight(cfg: RunConfig) -> torch.device:
    """Every check that needs no data and no weights, before any work; returns the device.

    Bad input raises a one-line error (``ValueError`` / ``FileNotFoundError`` family:
    exit code 2 in the CLI): the settings (:func:`~bench.engine.config.check_settings`),
    ``--out`` (a file, under a file, read-only, no permission), the device (not a device,
    CUDA without a GPU), an ``--init`` that is neither a catalogue name nor an existing
    file, ``--checkpoint`` / ``--split-file`` paths that do not exist, and a preprocessing
    cache (``$CXRBENCH_CACHE``) that cannot be written.
    """
    check_settings(cfg)
    problem = writable_dir_problem(cfg.out)
    if problem:
        raise OutputError(f"--out {cfg.out}: {problem}")
    device = resolve_device(cfg.device)
    _check_paths(cfg)
    _check_cache(cfg)
    return device


def _looks_like_path(init: str) -> bool:
    from weights_registry.catalogue import CHECKPOINT_SUFFIXES, init_names

    text = os.fspath(init)
    if text in init_names():
        return False
    return (text.endswith(CHECKPOINT_SUFFIXES) or "/" in text or os.sep in text
            or Path(text).expanduser().exists())  # fmt: skip


def _check_paths(cfg: RunConfig) -> None:
    """``--init`` is a catalogue name or an existing file; ``--checkpoint`` and
    ``--split-file`` exist."""
    if _looks_like_path(cfg.init):
        p = Path(cfg.init).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--init {cfg.init}: checkpoint file not found: {p.resolve()}")
        if not p.is_file():
            raise FileNotFoundError(f"--init {cfg.init}: {p.resolve()} is a folder, not a checkpoint file")
    else:
        from weights_registry import get_entry

        get_entry(cfg.init)  # an unknown name fails here, listing the known ones
    for flag, value in (("--checkpoint", cfg.checkpoint), ("--split-file", cfg.split_file)):
        if value is not None and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{flag} {value}: file not found: {Path(value).expanduser().resolve()}")
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"--checkpoint {cfg.checkpoint}: {Path(cfg.checkpoint).expanduser().resolve()} "
                                "is a folder, not a checkpoint file")  # fmt: skip


def _check_cache(cfg: RunConfig) -> None:
    """The preprocessing cache must be writable, unless it already holds a cache of this
    task at this image size (a read-only cache built beforehand stays usable)."""
    from tasks.cache import cache_root

    root = cache_root()
    problem = writable_dir_problem(root)
    if problem is None or _has_prepared(root, cfg.task, cfg.image_size):
        return
    raise OutputError(f"the preprocessing cache ($CXRBENCH_CACHE) cannot be written: {problem}; "
                      "set CXRBENCH_CACHE to a writable folder")  # fmt: skip


def _has_prepared(root: Path, task: str, image_size: int) -> bool:
    for manifest in (root / "prepared" / task).glob("*/manifest.json"):
        try:
            if json.loads(manifest.read_text()).get("image_size") == image_size:
                return True
        except (OSError, ValueError):
            continue
    return False


def _data_section(root, synthetic: bool, prepared) -> dict:
    return {
        "root": str(Path(root).resolve()),
        "synthetic": synthetic,
        "cache_dir": str(prepared.cache_dir),
        "n_images": len(prepared.ids),
        "manifest_counts": prepared.manifest.get("counts"),
        "rle_format": prepared.manifest.get("rle_format"),
    }


def _split_section(cfg: RunConfig, splits: dict, train_idx: list[int]) -> dict:
    return {
        "name": f"file:{cfg.split_file}" if cfg.split_file else "cxrbench-hash-v1 70/15/15 by patient",
        "counts": {
            "train_total": len(splits["train"]),
            "train": len(train_idx),
            "val": len(splits["val"]),
            "test": len(splits["test"]),
        },
        "fraction": cfg.fraction,
    }


def _finish(record: dict, out_path: Path, t_start: float) -> None:
    record["timing"]["ended"] = _now()
    record["timing"]["wall_s"] = round(time.perf_counter() - t_start, 3)
    write_json_atomic(out_path, record)


def _train_and_test(cfg, prepared, encoder, winfo, splits, train_idx, device) -> dict:
    """Build the head's model for the protocol, fit on train, pick on val, score on test."""
    head = make_head(cfg.output, cfg, winfo, device)
    model = head.build(encoder).to(device)
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    metric = cfg.spec.primary_metric(cfg.protocol)

    data_path: dict = {}  # decided at the first loader: the device cache, or the DataLoader

    def loader(idx, train):
        """The batches of cache indices ``idx``: gathered on the GPU from the run's cache
        copied there once (DeviceBatches) when it fits, else a DataLoader; same batches."""
        dataset = head.dataset(prepared, idx)
        if not data_path:
            use, why = device_cache_plan(cfg.device_cache, dataset, device)
            if use:
                cache = DeviceCache.of(dataset, device)
                data_path.update(kind="device", reason=why, bytes=cache.nbytes, cache=cache)
            else:
                data_path.update(kind="loader", reason=why, num_workers=loader_workers(cfg.num_workers, device),
                                 pin_memory=device.type == "cuda")  # fmt: skip
        if data_path["kind"] == "device":
            return DeviceBatches(dataset, cfg.batch_size, train=train, seed=cfg.seed, cache=data_path["cache"])
        return make_loader(dataset, cfg.batch_size, train=train, seed=cfg.seed, num_workers=data_path["num_workers"],
                           collate_fn=head.collate, pin_memory=data_path["pin_memory"])  # fmt: skip

    evaluate = head.evaluator(prepared.ids)
    train_loader, val_loader, test_loader = (loader(train_idx, True), loader(splits["val"], False),
                                             loader(splits["test"], False))  # fmt: skip
    diagnostics = head.diagnostics(prepared, train_idx)
    reuse, why = reuse_decision(cfg.protocol, cfg.feature_reuse)
    reuse_info: dict = {"used": reuse, "reason": why}
    history: list[dict] = []
    errors: list[dict] = []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if reuse:
            needed = sorted(set(train_idx) | set(splits["val"]) | set(splits["test"]))
            try:
                store = FeatureStore.build(model, head.loss_step, loader(needed, False), device,
                                           batch_size=cfg.batch_size, progress=cfg.progress)  # fmt: skip
            except ReuseSkipped as e:
                store, reuse_info = None, {"used": False, "reason": str(e)}
            if store is not None:
                stack.callback(store.close)
                replay = ReplayEncoder(store)
                stack.enter_context(replaced_encoder(model, replay))
                train_loader, val_loader, test_loader = (ReplayLoader(x, replay)
                                                         for x in (train_loader, val_loader, test_loader))  # fmt: skip
                reuse_info.update(store.summary())
        compiled = compile_model(model, cfg.compile)  # after the feature store: its hook runs eagerly
        try:
            fitted = fit(
                model, train_loader, val_loader,
                loss_step=head.loss_step, evaluate=evaluate, metric=metric, lr=cfg.resolved_lr,
                weight_decay=cfg.weight_decay, epochs=cfg.epochs, patience=cfg.patience,
                device=device, progress=cfg.progress,
                on_epoch=lambda e: (history.append(e), _print_epoch(e, metric, cfg.progress)),
            )  # fmt: skip
        except NanLossError as e:
            e.history = history
            raise
        train_s = time.perf_counter() - t0
        val = evaluate(model, val_loader)
        test = evaluate(model, test_loader)
        # optional side files: one that cannot be written is noted, never fails the run
        wants_predictions = cfg.save_predictions and head.kind == cfg.spec.submission_kind
        if wants_predictions:
            sub = Path(cfg.out) / f"{cfg.run_id}.test-predictions.csv"
            predictions = artifacts.write_optional(
                "predictions", sub, lambda: artifacts.write_submission(sub, cfg.spec, head, model, test_loader,
                                                                       prepared, cfg.spec.option_values(cfg)),
                errors)  # fmt: skip
    out = {
        "metrics": {"val": val, "test": test},
        "history": fitted["history"],
        "best_epoch": fitted["best_epoch"],
        "stopped_early": fitted["stopped_early"],
        "diverged": fitted.get("diverged", False),
        "parameters": count_parameters(model),
        "feature_reuse": reuse_info,
        "data_path": {k: v for k, v in data_path.items() if k != "cache"},
        "compile": compiled,
        "timing_train": {"train_s": round(train_s, 3)},
        **diagnostics,
    }
    if wants_predictions:
        out["predictions"] = predictions
    idx = artifacts.choose_examples(prepared, splits["test"])
    path = Path(cfg.out) / f"{cfg.run_id}.examples.npz"
    out["examples"] = artifacts.write_optional(
        "examples", path, lambda: artifacts.save_examples(path, head.examples(model, prepared, idx)), errors)
    if errors:
        out["artifact_errors"] = errors
    return out


def _print_epoch(entry: dict, metric: str, progress: bool) -> None:
    if not progress:
        return
    val = entry["val"].get(metric)
    print(
        f"  epoch {entry['epoch']:>3}  loss {entry['train_loss']:.4f}  "
        f"val {metric} {float('nan') if val is None else val:.4f}"
        f"{'  *' if entry['best'] else ''}  ({entry['seconds']:.1f}s)",
        file=sys.stderr,
    )
