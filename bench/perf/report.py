"""The result of ``bench perf``: one JSON-able dict (:func:`assemble`), its markdown (:func:`markdown`).

JSON fields (all images/s unless named otherwise; ratios are computed from the
unrounded figures, so ``efficiency == pipeline_ips / compute_ips`` exactly):
``compute_ips``, ``pipeline_ips``, ``efficiency``, ``loader_ips``, ``dicom_ips``,
``cache_speedup`` (``loader_ips / dicom_ips``), ``dicom_step_ips``,
``dicom_step_efficiency`` (``dicom_step_ips / compute_ips``), ``plain_fp32_ips`` (the
compute step in float32, NCHW), ``fast_path_speedup`` (``compute_ips / plain_fp32_ips``)
and ``fast_path`` (what the default step adds: bf16 autocast, channels_last), ``reuse_speedup``
(protocol -> ratio, a real epoch without / with reuse), ``reuse_limit`` (protocol ->
head-only step / full step), ``reuse`` (every figure per frozen protocol), ``eval``,
``cache_build`` (the task's cache build of the 1024x1024 DICOMs: in-process, and
``parallel`` with 2 worker processes), ``cache_build_2_vs_1`` (its images/s with 2
workers / with 1), ``pretrain`` (method -> figures), ``memory`` (path -> peak host MiB,
device MiB, one-batch Python allocation), ``settings``, ``command``, ``env``,
``timing``, ``targets`` (issue 12's), ``projection`` (the standard table's hours on this
device and settings, :func:`bench.perf.projection.project`) and ``notes``.
"""

from __future__ import annotations

from bench.perf.projection import GOAL_HOURS, project
from bench.perf.reuse import REUSE_NOTE
from bench.perf.settings import PERF_VERSION, REUSE_PROTOCOLS

TARGETS = {
    "efficiency": {"cpu": 0.95, "cuda": 0.9},
    "cache_speedup": 10.0,
    "reuse_speedup": {"linear": 15.0, "frozen": 1.15},
    "cache_build_2_vs_1_workers": 1.7,
}


def _fast_path(device) -> str:
    """What ``compute_ips`` runs that ``plain_fp32_ips`` does not, on ``device``."""
    from bench.models.device import autocast, channels_last

    parts = []
    ctx = autocast(device)
    if getattr(ctx, "fast_dtype", None) is not None:
        parts.append(f"{str(ctx.fast_dtype).replace('torch.', '')} autocast")
    if channels_last(device):
        parts.append("channels_last")
    return " + ".join(parts) or "nothing (the same float32, NCHW step)"


def command(s, device) -> str:
    """The ``bench perf`` command line that measures these settings again."""
    parts = ["bench perf", f"--task {s.task}", f"--arch {s.arch}", f"--protocol {s.protocol}",
             f"--image-size {s.image_size}", f"--batch-size {s.batch_size}", f"--device {device}",
             f"--steps {s.steps}", f"--warmup {s.warmup}", f"--rounds {s.resolved_rounds}"]  # fmt: skip
    if s.init != "random":
        parts.append(f"--init {s.init}")
    if s.data_root:
        parts.append(f"--data-root {s.data_root}")
    if s.num_workers:
        parts.append(f"--num-workers {s.num_workers}")
    if s.threads is not None:
        parts.append(f"--threads {s.threads}")
    return " ".join(parts)


def _notes(s, setup, device, dicom_root) -> list[str]:
    notes = [
        "Ratios are measured side by side in one process: the paths of one ratio run interleaved "
        f"in {s.resolved_rounds} round(s) of the {s.steps} timed steps, after {s.warmup} untimed warm-up step(s). "
        "On a shared machine the absolute numbers move; the ratios are what hold.",
        REUSE_NOTE + ".",
        f"DICOM path: {s.dicoms} synthetic {1024}x{1024} DICOMs ({dicom_root}, the task's synth mix of plain, "
        "RLE, JPEG, MONOCHROME1 and rescaled files), cycled; read with tasks.imageio.read_dicom and resized "
        "with resize_image for every sample. The files sit in the page cache; real data read from disk is "
        "slower. Masks and boxes come from the cache on that path too (GLoRIA also decodes the RLE per sample).",
        "Host memory: peak RSS of the whole process while the path ran (it includes the models and data "
        "already loaded); loader workers, when used, are separate processes and not counted.",
    ]
    if setup.synthetic:
        notes.insert(
            0, f"SYNTHETIC DATA ({setup.root}): throughput only; says nothing about metrics."
        )
    if device.type == "cpu":
        notes.append("CPU: float32, no autocast, channels_last where oneDNN runs the convolutions (as bench "
                     "run); on CUDA the same code runs with bf16 autocast and channels_last.")  # fmt: skip
    return notes


def assemble(
    s, setup, *, data, train, alloc, reuse, evaluation, pretrain, cache_build, dicom_root, timing
) -> dict:
    from bench.env import env_info

    device = setup.device
    compute, pipeline, dstep, plain = (train[k].ips for k in ("compute", "pipeline", "dicom_step", "plain_fp32"))
    loader, dicom_ips = data["loader"].ips, data["dicom"].ips
    memory = {"compute": train["compute"].memory(), "pipeline": train["pipeline"].memory(),
              "dicom_step": train["dicom_step"].memory(), "plain_fp32": train["plain_fp32"].memory(),
              "loader": data["loader"].memory(),
              "dicom": data["dicom"].memory()}  # fmt: skip
    memory["loader"]["python_alloc_batch_mb"] = alloc["loader"]
    memory["dicom"]["python_alloc_batch_mb"] = alloc["dicom"]
    for p in REUSE_PROTOCOLS:
        memory.update(reuse[p].pop("memory"))
    memory.update(evaluation.pop("memory"))
    for name, r in pretrain.items():
        if "memory" in r:
            memory[f"pretrain_{name}"] = r.pop("memory")
    speedups = {p: reuse[p]["speedup"] for p in REUSE_PROTOCOLS}
    settings = {**s.to_dict(), "device": str(device), "data_root": str(setup.root), "synthetic": setup.synthetic,
                "n_images": len(setup.prepared), "n_train": len(setup.train_idx), "n_val": len(setup.splits["val"]),
                "output": setup.cfg.output, "dicom_root": str(dicom_root), "init_source": setup.winfo.get("source")}  # fmt: skip
    result = {
        "perf_version": PERF_VERSION,
        "compute_ips": compute,
        "pipeline_ips": pipeline,
        "efficiency": pipeline / compute,
        "loader_ips": loader,
        "dicom_ips": dicom_ips,
        "cache_speedup": loader / dicom_ips,
        "dicom_step_ips": dstep,
        "dicom_step_efficiency": dstep / compute,
        "plain_fp32_ips": plain,
        "fast_path_speedup": compute / plain,
        "fast_path": _fast_path(device),
        "reuse_speedup": speedups,
        "reuse_limit": {p: reuse[p]["limit"] for p in REUSE_PROTOCOLS},
        "reuse_note": REUSE_NOTE,
        "reuse": reuse,
        "eval": evaluation,
        "cache_build": cache_build,
        "cache_build_2_vs_1": cache_build["ratio_2_vs_1"],
        "pretrain": pretrain,
        "memory": memory,
        "settings": settings,
        "command": command(s, device),
        "env": env_info(str(device)),
        "timing": timing,
        "targets": TARGETS,
        "notes": _notes(s, setup, device, dicom_root),
    }
    result["projection"] = project(result)
    return result


# --------------------------------------------------------------------------- markdown


def _n(v, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _x(v) -> str:
    return "n/a" if v is None else f"x{v:.2f}"


def _mb(v) -> str:
    return "" if v is None else f"{v:,.0f}"


def _meets(value, target) -> str:
    if value is None or target is None:
        return ""
    return "yes" if value >= target else "no"


def _main_rows(r: dict) -> list[list[str]]:
    s, ev, cb = r["settings"], r["eval"], r["cache_build"]
    kind = "cuda" if s["device"].startswith("cuda") else "cpu"
    eff_target = TARGETS["efficiency"].get(kind)
    rt = TARGETS["reuse_speedup"]
    build_target = TARGETS["cache_build_2_vs_1_workers"]
    rows = [
        [
            "compute_ips",
            _n(r["compute_ips"]),
            "",
            "",
            f"training step of the real {s['protocol']} model on one batch already on the device (the limit)",
        ],
        [
            "pipeline_ips",
            _n(r["pipeline_ips"]),
            "",
            "",
            "the real path: prepared cache, dataset, loader, normalization, loss step",
        ],
        [
            "efficiency",
            f"{r['efficiency']:.3f}",
            f">= {eff_target} ({kind})",
            _meets(r["efficiency"], eff_target),
            "pipeline_ips / compute_ips",
        ],
        [
            "loader_ips",
            _n(r["loader_ips"]),
            "",
            "",
            "the data path alone: cache, dataset, collate, to the device",
        ],
        [
            "dicom_ips",
            _n(r["dicom_ips"]),
            "",
            "",
            "the same data path reading and resizing a 1024x1024 DICOM per sample (GLoRIA, MGCA)",
        ],
        [
            "cache_speedup",
            _x(r["cache_speedup"]),
            f">= {TARGETS['cache_speedup']:g}x",
            _meets(r["cache_speedup"], TARGETS["cache_speedup"]),
            "loader_ips / dicom_ips",
        ],
        [
            "dicom_step_ips",
            _n(r["dicom_step_ips"]),
            "",
            "",
            f"the training step fed by the DICOM path ({r['dicom_step_efficiency']:.2f} of compute_ips)",
        ],
        [
            "plain_fp32_ips",
            _n(r["plain_fp32_ips"]),
            "",
            "",
            "the compute_ips step in float32, NCHW: no autocast, no channels_last"
            + (" (CUDA convolutions may still use TF32, torch's default)" if kind == "cuda" else ""),
        ],
        [
            "fast_path_speedup",
            _x(r["fast_path_speedup"]),
            "report (GPU: resnet50 U-Net 224 px finetune)",
            "",
            f"compute_ips / plain_fp32_ips: what {r['fast_path']} gains",
        ],
    ]
    for p, limit in r["reuse_limit"].items():
        sp = (r["reuse_speedup"] or {}).get(p)
        rows.append([f"reuse_speedup {p}", _x(sp), f">= {rt[p]:g}x (resnet18, 64 px, CPU)", _meets(sp, rt[p]),
                     f"epoch without / with feature reuse ({r['reuse'][p]['ratio_to_limit']:.2f} of the limit)"])  # fmt: skip
        rows.append(
            [
                f"reuse_limit {p}",
                _x(limit),
                "",
                "",
                f"head-only step on precomputed features / full step ({r['reuse'][p]['output']} output)",
            ]
        )
    rows += [
        [
            "eval_ips",
            _n(ev["eval_ips"]),
            "",
            "",
            f"head's evaluator on {ev['n_images']} validation images: prediction + {', '.join(ev['metrics'][:3])}",
        ],
        [
            "metric_ips",
            _n(ev["metric_ips"]),
            "",
            "",
            "the same evaluator on recorded predictions (metrics alone)",
        ],
        [
            "cache_build_ips",
            _n(cb["ips"]),
            "",
            "",
            f"task prepare of {cb['n_images']} {cb['source_size']}x{cb['source_size']} DICOMs to {cb['image_size']} px, "
            f"{cb['workers']} worker (in-process)",
        ],
        [
            "cache_build_ips 2 workers",
            _n(cb["parallel"]["ips"]),
            "",
            "",
            f"the same prepare into a fresh cache with {cb['parallel']['workers']} worker processes "
            f"({cb['usable_cores']} usable cores)",
        ],
        [
            "cache_build_2_vs_1",
            _x(r["cache_build_2_vs_1"]),
            f">= {build_target:g}x (2 cores)",
            _meets(r["cache_build_2_vs_1"], build_target),
            f"cache-build images/s with 2 workers / with 1 (same DICOMs, same process; the median of "
            f"{len(cb.get('round_ratios') or [1])} round(s) side by side)",
        ],
    ]
    return rows


def _reuse_rows(r: dict) -> list[list[str]]:
    rows = []
    for p, v in r["reuse"].items():
        rows.append([p, v["output"], _n(v["full_step_ips"]), _n(v["head_step_ips"]), _n(v["encoder_ips"]),
                     _n(v["pipeline_ips"]), _x(v["limit"]), _n(v["epoch_s"], 2), _n(v["epoch_s_reuse_limit"], 2),
                     _n(v["reuse_epoch_s"], 2), _n(v["features_once_s"], 2), _x(v["speedup"]),
                     f"{v['ratio_to_limit']:.2f}"])  # fmt: skip
    return rows


def _pretrain_rows(r: dict) -> list[list[str]]:
    rows = []
    for name, v in r["pretrain"].items():
        if v.get("ips") is None:
            rows.append([name, "failed", "", "", v.get("error", "")])
            continue
        rows.append(
            [name, _n(v["ips"]), v["optimizer"], _n(v["build_s"], 1), v.get("text_encoder", "")]
        )
    return rows


def _memory_rows(r: dict) -> list[list[str]]:
    return [[path, _mb(m.get("host_peak_mb")), _mb(m.get("device_peak_mb")),
             "" if m.get("python_alloc_batch_mb") is None else f"{m['python_alloc_batch_mb']:.1f}"]
            for path, m in r["memory"].items()]  # fmt: skip


def markdown(r: dict) -> str:
    """The perf report: main table, reuse, pretraining, memory, settings, machine, notes."""
    s, env = r["settings"], r["env"]
    title = (f"# bench perf: {s['task']} {s['protocol']} ({s['output']}), {s['arch']}, {s['image_size']} px, "
             f"batch {s['batch_size']}, {s['device']}")  # fmt: skip
    out = [title, ""]
    if s["synthetic"]:
        out += ["**SYNTHETIC DATA**: throughput only.", ""]
    out += [f"`{r['command']}`", "", "Images/s unless marked; ratios from one process.", ""]
    out += [_table(["figure", "value", "target", "met", "what it measures"], _main_rows(r)), ""]
    out += ["## Feature reuse (frozen encoders)", "", r["reuse_note"] + ".", ""]
    out += [_table(["protocol", "output", "full step", "head step", "encoder fwd", "pipeline", "limit",
                    "epoch s", "epoch s at limit", "epoch s reuse", "features once s", "reuse speedup",
                    "of limit"], _reuse_rows(r)), ""]  # fmt: skip
    if r["pretrain"]:
        out += ["## Pretraining (`bench pretrain`)", "",
                f"Training step on one batch of synthetic tensors on the device, batch {s['batch_size']}, "
                f"{s['image_size']} px, each method's recipe otherwise.", ""]  # fmt: skip
        out += [
            _table(["method", "img/s", "optimizer", "build s", "text encoder"], _pretrain_rows(r)),
            "",
        ]
    out += _projection_section(r.get("projection") or {})
    out += ["## Peak memory per path", ""]
    out += [_table(["path", "host peak MiB (RSS)", "device peak MiB", "Python alloc MiB (one batch)"],
                   _memory_rows(r)), ""]  # fmt: skip
    keys = ("task", "protocol", "output", "arch", "image_size", "batch_size", "device", "init", "detector", "steps",
            "warmup", "rounds", "pretrain_steps", "num_workers", "threads", "dicoms", "seed", "data_root", "synthetic",
            "n_images", "n_train", "n_val")  # fmt: skip
    out += ["## Settings", "", _table(["setting", "value"], [[k, s.get(k)] for k in keys]), ""]
    t = r["timing"]
    machine = [[k, env.get(k)] for k in ("platform", "python", "torch", "torchvision", "smp", "device", "threads",
                                         "gpu", "cuda", "git_commit") if env.get(k) is not None]  # fmt: skip
    machine += [["cpu count", _cpu_count()], ["load average at start / end", f"{t['load_avg_start']} / {t['load_avg_end']}"],
                ["wall time s", f"{t['wall_s']:.1f}"], ["started", t["started"]]]  # fmt: skip
    out += ["## Machine", "", _table(["", ""], machine), ""]
    out += ["## Notes", "", *(f"- {n}" for n in r["notes"]), ""]
    return "\n".join(out)


def _projection_section(p: dict) -> list[str]:
    if not p:
        return []
    out = ["## Projection: the standard table on this device", ""]
    if "skipped" in p:
        return out + [f"Not projected: {p['skipped']}.", ""]
    out += [f"{p['task']}: {p['runs']} runs (7 inits x 3 protocols x 3 label fractions x 5 seeds) on the real data "
            f"set's {p['images']:,} images, {p['epochs']} epochs each, at the measured settings ({p['settings']}), "
            f"one run at a time: **{p['hours']:.1f} h**. Most of it: {p['dominant']}. The goal of issue 12 is "
            f"under {GOAL_HOURS:.0f} h for SIIM and RSNA together at resnet50, 224 px, on one GPU. Upper bounds "
            "(every run counts all its epochs); the lr search and each run's set-up are not counted "
            "(bench.perf.projection says how each row is computed).", ""]  # fmt: skip
    rows = [[r["protocol"], f"{r['fraction']:.0%}", r["runs"], r["reuse"], f"{r['hours_per_run'] * 60:.1f}",
             f"{r['hours']:.2f}", f"{r['share']:.1%}"] for r in p["rows"]]  # fmt: skip
    rows.append(["all", "", p["runs"], "", "", f"{p['hours']:.2f}", "100%"])
    out += [_table(["protocol", "labels", "runs", "feature reuse", "min per run", "hours", "share"], rows), ""]
    ph = p["phases"]
    out += [f"Phases: encoder features once {ph['features']:.2f} h, training epochs {ph['train']:.2f} h, "
            f"validation and test {ph['eval']:.2f} h.", ""]  # fmt: skip
    return out


def _cpu_count():
    import os

    return os.cpu_count()


def _table(header, rows) -> str:
    def row(cells):
        return (
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )

    return "\n".join([row(header), row(["---"] * len(header)), *(row(c) for c in rows)])
