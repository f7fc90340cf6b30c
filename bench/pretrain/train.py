"""One pretraining, top to bottom: data, model, loop, checkpoints, catalogue entry.

Owns :func:`pretrain` (``bench pretrain``) and :class:`PretrainFailed`. The flow:
read the corpus (``corpora``) and check that the method can use it; decode the images
once (cached); build the encoder and the method's model; train for the settings'
epochs with the recipe's optimizer and a cosine schedule (bf16 autocast on CUDA,
channels_last on CUDA and oneDNN CPUs; DDP under ``torchrun``, each process taking ``batch_size /
world_size`` of the global batch); after every epoch write the encoder
(``encoder.safetensors``, the plain torchvision layout), the training state
(``state.pt``, for ``--resume``) and one line of ``log.jsonl``; at the end the sha256,
``pretrain.json`` and the user-catalogue entry. A NaN loss stops with a clear status
and keeps the last good epoch's files; an interrupt keeps them too.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto, whose bar calls iter() on a loader once more (test_reuse)

from bench.models.device import channels_last as nhwc
from bench.pretrain.methods import Context, get_method
from bench.pretrain.settings import PretrainSettings, differences, resolve
from bench.util import atomic_write, json_safe, sha256_file, write_json_atomic

ENCODER_FILE, STATE_FILE, LOG_FILE, RECORD_FILE = "encoder.safetensors", "state.pt", "log.jsonl", "pretrain.json"


class PretrainFailed(RuntimeError):
    """Training started and then failed (NaN loss); pretrain.json says why, the last good epoch stays."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


# ------------------------------------------------------------------------- set-up


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    from bench.models.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _usable(corpus, method, records):
    """Indices of the records the method can train on; ValueError when it cannot use this data."""
    if method.needs_labels and not corpus.label_names:
        raise ValueError(f"--method {method.name} needs image labels, and the {corpus.layout} data at "
                         f"{corpus.root} has none")  # fmt: skip
    if method.needs_reports:
        if not corpus.has_reports:
            raise ValueError(
                f"--method {method.name} needs reports, and the {corpus.layout} layout at {corpus.root} "
                "has none: use an image-only method (simclr, moco, supervised) or data with reports "
                "(MIMIC-CXR with its reports, OpenI)"
            )
        keep = [i for i, r in enumerate(records) if r.report is not None and r.report.sentences()]
        return keep, {"images without report sentences": len(records) - len(keep)}
    return list(range(len(records))), {}


def _check_batch(method, s: PretrainSettings, n: int, world: int) -> int:
    if s.batch_size % world:
        raise ValueError(f"--batch-size {s.batch_size} (the global batch) must divide by the {world} processes")
    per_rank = s.batch_size // world
    if method.contrastive and per_rank < 2:
        raise ValueError(
            f"{method.name}'s contrastive loss needs at least 2 samples per process batch; "
            f"--batch-size {s.batch_size} over {world} process(es) gives {per_rank}"
        )
    if n < s.batch_size:
        raise ValueError(
            f"the data has {n} usable images, fewer than one batch of {s.batch_size}: lower --batch-size"
        )
    return per_rank


def _optimizer(s: PretrainSettings, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"unknown --optimizer {s.optimizer!r}; choose adam, adamw or sgd")


def _to(batch, device: torch.device, channels_last: bool):
    if isinstance(batch, torch.Tensor):
        x = batch.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
    if isinstance(batch, list | tuple):
        return type(batch)(_to(b, device, channels_last) for b in batch)
    return batch


# ------------------------------------------------------------------------- output


ENCODER_METADATA = {"format": "pt"}


def encoder_bytes(state: dict) -> bytes:
    """The encoder file's bytes: the same tensors give the same bytes in any process.

    safetensors writes its ``__metadata__`` from a Rust HashMap, in an order that changes
    from process to process: with two keys (``format`` and a ``layout`` key, until
    2026-12-03) identical weights gave one of two sha256s, so a repeated pretraining
    looked like another encoder. One key has one order. (The key layout is torchvision's
    ResNet: ``weights_registry`` recognizes it from the keys, not from metadata.)"""
    from safetensors.torch import save

    return save(state, metadata=ENCODER_METADATA)


def _save_epoch(out: Path, model, optimizer, scheduler, generator, s, epoch, history) -> None:
    from bench.pretrain.encoder import export_state

    blob = encoder_bytes(export_state(model.encoder))
    atomic_write(out / ENCODER_FILE, lambda f: f.write(blob), binary=True)
    payload = {"epoch": epoch, "settings": s.to_dict(), "model": model.state_dict(),
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "torch_rng": torch.get_rng_state(), "loader_rng": generator.get_state(),
               "history": history}  # fmt: skip
    atomic_write(out / STATE_FILE, lambda f: torch.save(payload, f), binary=True)


def _record(s, method, corpus, ctx, history, status, **extra) -> dict:
    from bench.env import env_info

    return json_safe({
        "name": s.name, "method": method.name, "title": method.title, "citation": method.citation,
        "status": status, "settings": s.to_dict(), "from_recipe": s.from_recipe,
        "data": {"root": str(corpus.root), "layout": corpus.layout, "dataset": corpus.dataset,
                 "synthetic": corpus.synthetic, "skipped": corpus.skipped, "summary": corpus.summary()},
        "stats": ctx.stats, "history": history, "env": env_info(str(ctx.device)), **extra,
    })  # fmt: skip


def _catalogue_entry(s, method, corpus, sha: str, epochs_done: int) -> dict:
    from tasks import tasks_seen_by

    dataset = corpus.dataset + (" (cxrbench synthetic)" if corpus.synthetic else "")
    seen = [] if corpus.synthetic else list(tasks_seen_by([corpus.dataset]))
    return {
        "description": f"{method.title} pretrained by bench pretrain on {dataset}, {s.arch}, "
                       f"{epochs_done} epochs at {s.image_size} px",
        "archs": [s.arch], "format": "plain", "in_channels": 3,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "source": {"file": str((s.out_dir / ENCODER_FILE).resolve()), "sha256": sha},
        "pretrained_on": [dataset], "seen_tasks": seen,
        "note": f"Made by `bench pretrain --method {method.name}`; settings in {s.out_dir.resolve() / RECORD_FILE}.",
        "citation": method.citation,
        "pretraining": {"method": method.name, "data": s.data, "layout": corpus.layout, "views": s.views,
                        "epochs": epochs_done, "image_size": s.image_size, "batch_size": s.batch_size,
                        "lr": s.lr, "seed": s.seed, "normalization": "ImageNet mean/std, 3 channels",
                        "out": str(s.out_dir.resolve())},
    }  # fmt: skip


# ------------------------------------------------------------------------- the loop


def _global_mean(value: torch.Tensor, world: int) -> float:
    """The loss averaged over the processes (the loss of the global batch)."""
    if world > 1:
        import torch.distributed as dist

        value = value.float().clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _train_epoch(ddp, model, loader, optimizer, scheduler, scaler, device, epoch, progress, channels_last,
                 world: int = 1):  # fmt: skip
    from bench.models.device import autocast

    ddp.train()
    total, n, images, t0 = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"pretrain epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for step, batch in enumerate(bar):
        batch = _to(batch, device, channels_last)
        with autocast(device):
            loss = ddp(batch)
        value = _global_mean(loss.detach(), world)  # every rank sees the same value: a NaN stops all
        if not math.isfinite(value):
            return {"nan": (step, value)}
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # a no-op scaler except on fp16 GPUs
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total, n, images = total + value, n + 1, images + len(batch[0]) * world  # images of the global batch
        bar.set_postfix(loss=f"{value:.4f}", ips=f"{images / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "loss": total / max(n, 1), "steps": n, "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 2), "lr": scheduler.get_last_lr()[0]}  # fmt: skip


def pretrain(settings: PretrainSettings, *, resume: bool = False, progress: bool = True,
             register: bool = True) -> dict:  # fmt: skip
    """Run one pretraining; returns its pretrain.json record (status "done")."""
    from bench.env import seed_everything
    from bench.pretrain.encoder import new_encoder
    from corpora import decode_images, read_corpus

    s = resolve(settings)
    method = get_method(s.method)
    if register:
        from weights_registry.catalogue import packaged_names

        if s.name in packaged_names():
            raise ValueError(f"--name {s.name!r} is a packaged initialization; choose another name "
                             f"(for example {s.name}-<data>)")  # fmt: skip
    rank, world, device = _distributed(s.device)
    out = s.out_dir
    state = _resume_state(out, s, resume)

    corpus = read_corpus(s.data, s.layout, views=s.views)
    if rank == 0:
        print(f"bench pretrain: {method.title} on {corpus.summary()}", flush=True)
    images, records, decode_skipped = decode_images(corpus, s.image_size, progress=progress and rank == 0)
    keep, skipped = _usable(corpus, method, records)
    corpus.skipped.update({**decode_skipped, **{k: v for k, v in skipped.items() if v}})
    if len(keep) < len(records):  # (a copy: only when some images cannot be used)
        images, records = images[keep], [records[i] for i in keep]
    per_rank = _check_batch(method, s, len(records), world)

    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(corpus=corpus, out_dir=out, records=records, rank=rank, world=world, device=device)
    seed_everything(s.seed)
    model = method.build(new_encoder(s.arch), s, ctx)
    dataset = method.dataset(images, records, s, ctx)
    channels_last = nhwc(device)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    generator = torch.Generator().manual_seed(s.seed)
    loader, sampler = _loader(dataset, per_rank, s, world, rank, generator, device)
    optimizer = _optimizer(s, model)
    total_steps = s.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    history, start = [], 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        history, start = list(state["history"]), int(state["epoch"]) + 1
        if rank == 0:
            print(f"bench pretrain: resuming {out} after epoch {state['epoch']} of {s.epochs}", flush=True)
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if rank == 0:
        write_json_atomic(out / RECORD_FILE, _record(s, method, corpus, ctx, history, "running"))
    try:
        _epochs(s, method, corpus, ctx, ddp, model, loader, sampler, optimizer, scheduler, generator,
                device, history, start, rank, progress, channels_last)  # fmt: skip
    except KeyboardInterrupt:
        if rank == 0:
            write_json_atomic(out / RECORD_FILE, _record(s, method, corpus, ctx, history, "interrupted"))
            print(f"bench pretrain: interrupted after epoch {len(history) and history[-1]['epoch']}; "
                  "continue with the same command and --resume", flush=True)  # fmt: skip
        raise
    return _finish(s, method, corpus, ctx, history, rank, register)


def _epochs(s, method, corpus, ctx, ddp, model, loader, sampler, optimizer, scheduler, generator,
            device, history, start, rank, progress, channels_last) -> None:  # fmt: skip
    from bench.models.device import grad_scaler

    out = s.out_dir
    scaler = grad_scaler(device)
    for epoch in range(start, s.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        entry = _train_epoch(ddp, model, loader, optimizer, scheduler, scaler, device, epoch,
                             progress and rank == 0, channels_last, ctx.world)  # fmt: skip
        if "nan" in entry:
            step, value = entry["nan"]
            kept = f"{ENCODER_FILE} and {STATE_FILE} hold epoch {epoch - 1}" if epoch > 1 else "no epoch finished"
            message = (f"{method.name} pretraining loss became {value} at epoch {epoch}, step {step}; stopped "
                       f"({kept}). Try a lower --lr.")  # fmt: skip
            record = _record(s, method, corpus, ctx, history, "failed", error=message)
            if rank == 0:
                write_json_atomic(out / RECORD_FILE, record)
            raise PretrainFailed(message, record)
        history.append(entry)
        if rank == 0:
            _save_epoch(out, model, optimizer, scheduler, generator, s, epoch, history)
            with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            if not progress:
                continue
            print(f"  epoch {epoch}/{s.epochs}: loss {entry['loss']:.4f}, {entry['images_per_s']:.1f} images/s",
                  flush=True)  # fmt: skip


def _loader(dataset, per_rank, s, world, rank, generator, device):
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=s.seed,
                                     drop_last=True)  # fmt: skip
    else:
        sampler = None
    loader = DataLoader(dataset, batch_size=per_rank, drop_last=True, num_workers=s.workers,
                        sampler=sampler or RandomSampler(dataset, generator=generator),
                        generator=generator, pin_memory=device.type == "cuda",
                        persistent_workers=s.workers > 0)  # fmt: skip
    return loader, sampler


def _resume_state(out: Path, s: PretrainSettings, resume: bool):
    path = out / STATE_FILE
    if not path.exists():
        if resume and (out / RECORD_FILE).exists():
            print(f"bench pretrain: --resume: {out} has no {STATE_FILE} (no epoch had finished); "
                  "starting from epoch 1", flush=True)  # fmt: skip
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not resume:
        raise ValueError(
            f"{out} already holds a pretraining (epoch {state['epoch']} of {state['settings'].get('epochs')}): "
            "pass --resume to continue it, or choose another --out / --name"
        )
    diffs = differences(state["settings"], s)
    if diffs:
        raise ValueError(f"--resume refused: {out} was pretrained with other settings: " + "; ".join(diffs))
    return state


def _finish(s, method, corpus, ctx, history, rank, register) -> dict:
    out = s.out_dir
    if ctx.world > 1:  # only rank 0 writes the encoder (_epochs): the others hash it once it is there
        import torch.distributed as dist

        dist.barrier()
    done = history[-1]["epoch"] if history else 0
    sha = sha256_file(out / ENCODER_FILE)
    entry = _catalogue_entry(s, method, corpus, sha, done)
    record = _record(s, method, corpus, ctx, history, "done", encoder=str((out / ENCODER_FILE).resolve()),
                     sha256=sha, catalogue_entry=entry)  # fmt: skip
    if rank == 0:
        atomic_write(out / (ENCODER_FILE + ".sha256"), lambda f: f.write(f"{sha}  {ENCODER_FILE}\n"))
        write_json_atomic(out / RECORD_FILE, record)
        if register:
            from weights_registry.user import add_user_entry

            path = add_user_entry(s.name, entry)
            print(f"bench pretrain: wrote {out / ENCODER_FILE} (sha256 {sha[:12]}...); "
                  f"--init {s.name} now resolves to it (user catalogue {path})", flush=True)  # fmt: skip
    return record
