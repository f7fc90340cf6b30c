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
are raised before anything is written; once training starts an interrupted or broken
run is always visible on disk and never half-written.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.engine import artifacts
from bench.engine.config import RunConfig
from bench.engine.dataroot import resolve_data_root
from bench.engine.records import RECORD_VERSION, env_info, record_path, write_json_atomic
from bench.engine.train import NanLossError, fit, seed_everything
from bench.engine.weights import LeakageError, load_weights
from bench.models.datasets import make_loader
from bench.models.device import resolve_device
from bench.models.heads import make_head
from bench.models.protocols import count_parameters
from tasks.splits import fraction_indices, split_indices

__all__ = ["LeakageError", "RunFailed", "execute", "primary_metric"]


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
    device = resolve_device(cfg.device)
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
    write_json_atomic(out_path, record)

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
    _finish(record, out_path, t_start)
    if record["status"] != "complete":
        raise RunFailed(f"run {cfg.run_id} {record['status']}: {record.get('error')}", record)
    return record


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
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    metric = cfg.spec.primary_metric(cfg.protocol)

    def loader(idx, train):
        return make_loader(head.dataset(prepared, idx), cfg.batch_size, train=train, seed=cfg.seed,
                           num_workers=cfg.num_workers, collate_fn=head.collate)  # fmt: skip

    evaluate = head.evaluator(prepared.ids)
    history: list[dict] = []
    t0 = time.perf_counter()
    try:
        fitted = fit(
            model, loader(train_idx, True), loader(splits["val"], False),
            loss_step=head.loss_step, evaluate=evaluate, metric=metric, lr=cfg.resolved_lr,
            weight_decay=cfg.weight_decay, epochs=cfg.epochs, patience=cfg.patience,
            device=device, progress=cfg.progress,
            on_epoch=lambda e: (history.append(e), _print_epoch(e, metric, cfg.progress)),
        )  # fmt: skip
    except NanLossError as e:
        e.history = history
        raise
    train_s = time.perf_counter() - t0
    val = evaluate(model, loader(splits["val"], False))
    test_loader = loader(splits["test"], False)
    out = {
        "metrics": {"val": val, "test": evaluate(model, test_loader)},
        "history": fitted["history"],
        "best_epoch": fitted["best_epoch"],
        "stopped_early": fitted["stopped_early"],
        "parameters": count_parameters(model),
        "timing_train": {"train_s": round(train_s, 3)},
    }
    idx = artifacts.choose_examples(prepared, splits["test"])
    path = Path(cfg.out) / f"{cfg.run_id}.examples.npz"
    out["examples"] = str(artifacts.save_examples(path, head.examples(model, prepared, idx)))
    if cfg.save_predictions and head.kind == cfg.spec.submission_kind:
        path = Path(cfg.out) / f"{cfg.run_id}.test-predictions.csv"
        artifacts.write_submission(path, cfg.spec, head, model, test_loader, prepared,
                                   cfg.spec.option_values(cfg))  # fmt: skip
        out["predictions"] = str(path)
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
