"""One run end to end: data, initialization, protocol, training, test, run record.

``execute(cfg)`` is what ``bench run`` (and every sweep executor) calls. Input
problems (missing data, unknown init, leakage, a checkpoint that does not fit) are
raised before anything is written. Once training starts, a ``running`` record is on
disk; it is replaced by a ``complete``, ``nan_loss`` or ``failed`` record at the end,
so an interrupted or broken run is always visible and never half-written.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.config import RunConfig
from bench.dataroot import resolve_data_root, task_module
from bench.records import RECORD_VERSION, env_info, record_path, write_json_atomic
from bench.train import NanLossError, resolve_device, seed_everything


class LeakageError(RuntimeError):
    """The initialization was pretrained on the images of the downstream task."""


class RunFailed(RuntimeError):
    """Training started and then failed; the record on disk says why."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def primary_metric(task: str, protocol: str) -> str:
    return "map" if task == "rsna" and protocol != "linear" else "dice"


def _leakage_message(cfg: RunConfig, pretrained_on) -> str:
    return (
        f"init {cfg.init!r} was pretrained on {', '.join(pretrained_on or []) or 'data'} "
        f"that includes the {cfg.task} images, so its {cfg.task} numbers would be inflated "
        "(design §8.8). Pass --allow-leakage to run it anyway; the record and the report "
        "flag it."
    )


def load_weights(cfg: RunConfig):
    """Registry encoder + info, with the leakage rule of design §8.8 applied.

    For a catalogue name the rule is checked before anything is downloaded.
    """
    import weights_registry as wr

    if not Path(cfg.init).expanduser().exists():
        entry = wr.get_entry(cfg.init)  # unknown names fail here, listing the known ones
        if wr.check_leakage(entry, cfg.task) and not cfg.allow_leakage:
            raise LeakageError(_leakage_message(cfg, entry.pretrained_on))
    encoder, info = wr.load_encoder(
        cfg.init,
        cfg.arch,
        checkpoint=cfg.checkpoint,
        prefix=cfg.prefix,
        allow_partial=cfg.allow_partial,
        trust_checkpoint=cfg.trust_checkpoint,
        mean=cfg.mean,
        std=cfg.std,
    )
    leakage = wr.check_leakage(info, cfg.task)
    info["leakage"] = leakage
    info["allow_leakage"] = cfg.allow_leakage
    if leakage and not cfg.allow_leakage:
        raise LeakageError(_leakage_message(cfg, info.get("pretrained_on")))
    return encoder, info


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
        "primary_metric": primary_metric(cfg.task, cfg.protocol),
        "hparams": cfg.hparams(),
        "config": cfg.to_dict(),
    }


def execute(cfg: RunConfig) -> dict:
    """Run one configuration and return its final record (also written to ``cfg.out``)."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.backends.cudnn.benchmark = False
    record = base_record(cfg)
    out_path = record_path(cfg.out, cfg.run_id)

    root, synthetic = resolve_data_root(cfg.task, cfg.data_root, progress=cfg.progress)
    seed_everything(cfg.seed)  # the random init and the decoder are drawn from this seed
    encoder, winfo = load_weights(cfg)
    module = task_module(cfg.task)
    prepared = module.prepare(
        root,
        cfg.image_size,
        rle_format=cfg.rle_format,
        strict=cfg.strict,
        progress=cfg.progress,
    )
    from tasks.common import fraction_indices, split_indices

    splits = split_indices(prepared, split_file=cfg.split_file)
    train_idx = fraction_indices(prepared, splits["train"], cfg.fraction)
    for name in ("train", "val", "test"):
        if not splits[name]:
            raise ValueError(f"the {name} split of {root} is empty; the dataset is too small")

    record.update(
        {
            "weights": winfo,
            "data": {
                "root": str(Path(root).resolve()),
                "synthetic": synthetic,
                "cache_dir": str(prepared.cache_dir),
                "n_images": len(prepared.ids),
                "manifest_counts": prepared.manifest.get("counts"),
                "rle_format": prepared.manifest.get("rle_format"),
            },
            "split": {
                "name": f"file:{cfg.split_file}" if cfg.split_file else "cxrbench-hash-v1 70/15/15 by patient",
                "counts": {
                    "train_total": len(splits["train"]),
                    "train": len(train_idx),
                    "val": len(splits["val"]),
                    "test": len(splits["test"]),
                },
                "fraction": cfg.fraction,
            },
            "env": env_info(str(device)),
            "timing": {"started": _now()},
        }
    )
    write_json_atomic(out_path, record)

    try:
        seed_everything(cfg.seed)
        result = _train_and_test(cfg, module, prepared, encoder, winfo, splits, train_idx, device)
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
                      traceback=traceback.format_exc(limit=20))
    _finish(record, out_path, t_start)
    if record["status"] != "complete":
        raise RunFailed(f"run {cfg.run_id} {record['status']}: {record.get('error')}", record)
    return record


def _finish(record: dict, out_path: Path, t_start: float) -> None:
    record["timing"]["ended"] = _now()
    record["timing"]["wall_s"] = round(time.perf_counter() - t_start, 3)
    write_json_atomic(out_path, record)


def _components(cfg, prepared, encoder, winfo, device):
    """Model, dataset factory, loss step and evaluation for the task's kind of output.

    SIIM (any protocol) and RSNA ``linear`` are segmentation (RSNA: of the box masks,
    design §5); RSNA ``frozen``/``finetune`` are detection.
    """
    from bench import detection as det
    from bench import segmentation as seg
    from bench.data import DetectionDataset, Normalize, SegmentationDataset
    from bench.models import build_segmenter

    channels = winfo["in_channels"]
    if primary_metric(cfg.task, cfg.protocol) == "dice":
        if prepared.masks is None:
            raise ValueError(f"{cfg.task} data has no masks for segmentation")
        normalize = Normalize(winfo["mean"], winfo["std"], channels)
        model = build_segmenter(encoder, cfg.arch, cfg.protocol, channels)
        return {
            "model": model,
            "dataset": lambda idx: SegmentationDataset(prepared.images, prepared.masks, idx),
            "collate": None,
            "loss_step": seg.make_loss_step(normalize, device.type == "cuda"),
            "evaluate": seg.make_evaluate(normalize, device, prepared.ids),
            "normalize": normalize,
        }
    if getattr(prepared, "boxes", None) is None:
        raise ValueError(f"{cfg.task} data has no boxes for detection")
    model = det.build_detector(
        encoder, cfg.arch, cfg.protocol, channels, winfo["mean"], winfo["std"],
        detector=cfg.detector, image_size=cfg.image_size,
    )
    return {
        "model": model,
        "dataset": lambda idx: DetectionDataset(prepared.images, prepared.boxes, idx),
        "collate": det.detection_collate,
        "loss_step": det.make_loss_step(channels),
        "evaluate": det.make_evaluate(device, prepared.ids, channels),
        "normalize": None,
    }


def _train_and_test(cfg, module, prepared, encoder, winfo, splits, train_idx, device) -> dict:
    """Build the model for the task/protocol, fit on train, pick on val, score on test."""
    from bench.data import make_loader
    from bench.models import count_parameters
    from bench.train import fit

    parts = _components(cfg, prepared, encoder, winfo, device)
    model = parts["model"].to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    metric = primary_metric(cfg.task, cfg.protocol)

    def loader(idx, train):
        return make_loader(parts["dataset"](idx), cfg.batch_size, train=train, seed=cfg.seed,
                           num_workers=cfg.num_workers, collate_fn=parts["collate"])

    evaluate = parts["evaluate"]
    history: list[dict] = []
    t0 = time.perf_counter()
    try:
        fitted = fit(
            model,
            loader(train_idx, True),
            loader(splits["val"], False),
            loss_step=parts["loss_step"],
            evaluate=evaluate,
            metric=metric,
            lr=cfg.resolved_lr,
            weight_decay=cfg.weight_decay,
            epochs=cfg.epochs,
            patience=cfg.patience,
            device=device,
            progress=cfg.progress,
            on_epoch=lambda e: (history.append(e), _print_epoch(e, metric, cfg.progress)),
        )
    except NanLossError as e:
        e.history = history
        raise
    train_s = time.perf_counter() - t0
    val = evaluate(model, loader(splits["val"], False))
    test_loader = loader(splits["test"], False)
    test = evaluate(model, test_loader)
    out = {
        "metrics": {"val": val, "test": test},
        "history": fitted["history"],
        "best_epoch": fitted["best_epoch"],
        "stopped_early": fitted["stopped_early"],
        "parameters": count_parameters(model),
        "timing_train": {"train_s": round(train_s, 3)},
    }
    out["examples"] = _save_examples(cfg, model, prepared, splits["test"], parts, device, metric)
    if cfg.save_predictions:
        path = Path(cfg.out) / f"{cfg.run_id}.test-predictions.csv"
        if metric == "dice" and cfg.task == "siim":
            write_segmentation_predictions(model, test_loader, parts["normalize"], device, prepared, path)
        elif metric == "map":
            write_detection_predictions(model, test_loader, device, prepared, path)
        else:
            path = None
        if path is not None:
            out["predictions"] = str(path)
    return out


def _save_examples(cfg, model, prepared, test_idx, parts, device, metric) -> str:
    from bench import examples

    idx = examples.choose_examples(prepared, test_idx)
    if metric == "map":
        payload = examples.collect_detection(model, prepared, idx, device)
    else:
        payload = examples.collect_segmentation(model, prepared, idx, parts["normalize"], device)
    path = Path(cfg.out) / f"{cfg.run_id}.examples.npz"
    return str(examples.save_examples(path, payload))


def write_segmentation_predictions(model, loader, normalize, device, prepared, path: Path) -> None:
    """Kaggle SIIM submission (ImageId,EncodedPixels) at each image's original resolution."""
    import torch.nn.functional as F

    from bench import segmentation as seg
    from tasks.siim import rle_encode

    rows = []
    for idx, probs, _ in seg.predict_probs(model, loader, normalize, device):
        for j, p in zip(idx, probs):
            h, w = prepared.orig_sizes[j]
            full = F.interpolate(p[None, None], size=(h, w), mode="bilinear", align_corners=False)
            mask = (full[0, 0] > 0.5).numpy().astype(np.uint8)
            rows.append((prepared.ids[j], rle_encode(mask)))
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(tmp, index=False)
    tmp.replace(path)


def write_detection_predictions(model, loader, device, prepared, path: Path) -> None:
    """Kaggle RSNA submission (patientId,PredictionString "conf x y w h ...") in original pixels."""
    import pandas as pd

    from bench import detection as det

    rows = []
    for idx, preds, _ in det.predict(model, loader, device):
        for j, p in zip(idx, preds):
            h, w = prepared.orig_sizes[j]
            sx, sy = w / prepared.image_size, h / prepared.image_size
            parts = []
            for (x1, y1, x2, y2), score in zip(p["boxes"].tolist(), p["scores"].tolist()):
                parts.append(f"{score:.4f} {x1 * sx:.1f} {y1 * sy:.1f} {(x2 - x1) * sx:.1f} {(y2 - y1) * sy:.1f}")
            rows.append((prepared.ids[j], " ".join(parts)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    pd.DataFrame(rows, columns=["patientId", "PredictionString"]).to_csv(tmp, index=False)
    tmp.replace(path)


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
