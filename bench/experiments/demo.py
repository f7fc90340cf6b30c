"""`bench demo`: the whole benchmark in miniature, on synthetic data, in minutes on a laptop.

Settings: ``bench/experiments/demo.yaml`` (the task, sizes, epochs, the pretraining;
``quick`` for ``--quick``). The demo

1. writes a synthetic downstream dataset in the task's official layout (``bench synth``)
   and a synthetic image-report pretraining corpus (``bench synth --task pretrain``,
   MIMIC-CXR-JPG layout; checked to share no image with the downstream set);
2. pretrains a small encoder with each method (``supervised``, ``simclr``, ``moco``
   with same-study MedAug positives, ``convirt``, ``clip``) through ``bench pretrain``'s
   own :func:`bench.pretrain.train.pretrain`, one budget for all;
3. probes every initialization (``random``, ``imagenet`` when its weights are in the
   weights cache, each pretrained one) with a logistic regression on frozen pooled
   features of a second synthetic corpus, scored by AUC on its finding labels;
4. runs every initialization under linear / frozen / finetune at the label fractions
   and seeds of the settings (finished runs are skipped when the demo is run again);
5. writes the report (``reports/demo.md`` by default) with its figures and a
   pretraining section (loss curves, probe AUCs).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import yaml
from tqdm import tqdm  # not tqdm.auto, whose bar calls iter() on a loader once more (test_reuse)

from bench.engine.config import PROTOCOLS, RunConfig
from bench.engine.dataroot import announce_synthetic
from bench.experiments.plan import resume_action


def demo_settings(quick: bool = False) -> dict:
    """The demo's settings from ``demo.yaml`` (``quick`` applied when asked)."""
    raw = yaml.safe_load(resources.files("bench.experiments").joinpath("demo.yaml").read_text())
    overrides = raw.pop("quick", {})
    return {**raw, **overrides} if quick else raw


def demo_configs(out: Path, data_root: Path, inits: list[tuple[str, str | None]], s: dict) -> list[RunConfig]:
    return [
        RunConfig(task=s["task"], init=init, init_name=name, protocol=protocol, fraction=fraction,
                  seed=seed, data_root=str(data_root), out=str(out / "records"), arch=s["arch"],
                  image_size=s["image_size"], epochs=s["epochs"], patience=s["patience"],
                  batch_size=s["batch_size"], lr=s["lr"], device="cpu", progress=False)  # fmt: skip
        for (init, name), protocol, fraction, seed in itertools.product(
            inits, PROTOCOLS, s["fractions"], s["seeds"]
        )
    ]


def _datasets(out: Path, s: dict, progress: bool) -> tuple[Path, Path, Path]:
    """The downstream set, the pretraining corpus and the probe corpus, each generated once."""
    from bench.engine.dataroot import synth_once
    from bench.util import generate_once
    from corpora import synth

    task, p = s["task"], s["pretrain"]
    data_root = synth_once(task, out / "data" / task, n=s["n"], seed=0, size=s["synth_size"], progress=progress)
    roots = []
    for key in ("corpus", "probe_corpus"):
        c = p[key]
        roots.append(generate_once(out / "data" / f"pretrain-{key.replace('_', '-')}",
                                   lambda tmp, c=c: synth(tmp, **c, progress=progress),
                                   what=f"a synthetic pretraining corpus ({key})"))  # fmt: skip
    return data_root, roots[0], roots[1]


def _check_disjoint(task, data_root: Path, corpus_root: Path, s: dict, progress: bool) -> None:
    """No pretraining image equals a downstream image (by content, at the downstream cache size)."""
    from corpora import decode_images, read_corpus

    size = s["image_size"]
    prepared = task.prepare(data_root, size, strict=False, progress=progress, **task.option_values(None))
    images, _, _ = decode_images(read_corpus(corpus_root, views="all"), size, progress=progress)
    digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    shared = {digest(a) for a in prepared.images} & {digest(a) for a in images}
    if shared:
        raise ValueError(f"{corpus_root}: the pretraining corpus shares {len(shared)} image(s) with {data_root}")


def _pretrain_plan(out: Path, corpus_root: Path, s: dict) -> tuple[dict[str, Path], dict]:
    """Every method's encoder file, and the settings of the pretrainings still to run
    (a finished one, ``pretrain.json`` with status ``done``, is skipped; one recorded with
    other result-changing settings is removed and runs again)."""
    from bench.pretrain.settings import PretrainSettings, differences, resolve
    from bench.pretrain.train import ENCODER_FILE, RECORD_FILE

    p, encoders, todo = s["pretrain"], {}, {}
    for method in p["methods"]:
        folder = out / "pretrained" / method
        values = {**p["settings"], **(p.get("method_settings") or {}).get(method, {})}  # the method's win
        settings = PretrainSettings(method=method, data=str(corpus_root), out=str(folder.parent), name=method,
                                    arch=s["arch"], device="cpu", **values)  # fmt: skip
        rec = folder / RECORD_FILE
        recorded = json.loads(rec.read_text()) if rec.exists() else None
        diffs = differences(recorded.get("settings") or {}, resolve(settings)) if recorded else []
        if diffs:  # an encoder of other settings (demo.yaml changed): its runs say nothing of these
            print(f"demo: {folder} was pretrained with other settings ({'; '.join(diffs)}); "
                  "pretraining it again", file=sys.stderr)  # fmt: skip
            shutil.rmtree(folder)
        if diffs or not (recorded and recorded.get("status") == "done"):
            todo[method] = settings
        encoders[method] = folder / ENCODER_FILE
    return encoders, todo


def _pretrain_one(settings, progress: bool = False) -> float:
    """One pretraining (resumed from its ``state.pt`` if interrupted); its seconds."""
    from bench.pretrain.train import pretrain

    t0 = time.perf_counter()
    resume = (Path(settings.out) / settings.name / "state.pt").exists()
    pretrain(settings, resume=resume, progress=progress, register=False)
    return time.perf_counter() - t0


def _by_cost(configs: list[RunConfig]) -> list[RunConfig]:
    """Longest runs first (finetune, frozen, linear; more labels first), so that the last
    runs to finish in the workers are short ones."""
    order = {"finetune": 0, "frozen": 1, "linear": 2}
    return sorted(configs, key=lambda c: (order.get(c.protocol, 0), -c.fraction))


def _schedule(pretrainings: dict, runs: dict, workers: int, progress: bool) -> tuple[float, dict, int]:
    """The pretrainings and the runs, in ``workers`` local worker processes (one torch thread
    each) or in this process. ``runs`` maps a method (or None: no pretraining needed) to
    its runs; a method's runs start as soon as its pretraining has finished, so the runs of
    ``random`` fill the cores while the encoders pretrain. Returns (pretraining seconds
    summed, the pretrainings that failed {method: error}, the number of failed runs)."""
    from bench.experiments.executors import run_local

    total = len(pretrainings) + sum(len(v) for v in runs.values())
    bar = tqdm(total=total, desc=f"demo: pretrainings and runs ({workers} worker(s))", disable=not progress,
               unit="job")  # fmt: skip
    seconds, errors, failed = 0.0, {}, 0

    def ran(outcome) -> None:
        nonlocal failed
        bar.update(1)
        if outcome.status != "complete":
            failed += 1
            print(f"demo: run {outcome.run_id} {outcome.status}: {outcome.error or ''}", file=sys.stderr)

    def pretrained(method: str, result) -> bool:
        """Account for one pretraining (``result``: its seconds, or the exception it raised)."""
        nonlocal seconds
        bar.update(1)
        if isinstance(result, Exception):
            errors[method] = result
            print(f"demo: pretraining {method} failed: {type(result).__name__}: {result}; its runs are skipped",
                  file=sys.stderr)  # fmt: skip
            bar.update(len(runs.get(method, [])))
            return False
        seconds += result
        return True

    if workers == 1 or not total:  # in this process
        for method, settings in pretrainings.items():
            try:
                result = _pretrain_one(settings, progress=progress)
            except Exception as e:  # noqa: BLE001 - reported at the end; the other methods go on
                result = e
            pretrained(method, result)
        for outcome in run_local([(c, None) for m, group in runs.items() if m not in errors for c in group]):
            ran(outcome)
        bar.close()
        return seconds, errors, failed

    from concurrent.futures import FIRST_COMPLETED, wait

    from bench.experiments.executors import _run_in_worker, local_pool, outcome_of

    with local_pool(workers, threads=1) as pool:
        futures = {pool.submit(_pretrain_one, st): ("pretrain", m) for m, st in pretrainings.items()}

        def submit(group: list[RunConfig]) -> None:
            futures.update({pool.submit(_run_in_worker, c, None): ("run", c) for c in _by_cost(group)})

        submit([c for m, group in runs.items() if m not in pretrainings for c in group])
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, what = futures.pop(fut)
                if kind == "run":
                    ran(outcome_of(fut, what))
                    continue
                try:
                    result = fut.result()
                except Exception as e:  # noqa: BLE001 - reported at the end; the other methods go on
                    result = e
                if pretrained(what, result):
                    submit(runs.get(what, []))
    bar.close()
    return seconds, errors, failed


def _probe_all(probe_root: Path, inits: list[tuple[str, str | None]], s: dict, progress: bool) -> dict:
    """Linear-probe AUC of every init's frozen pooled features on the probe corpus's findings."""
    import weights_registry as wr
    from bench.env import seed_everything
    from bench.pretrain.methods.supervised import label_matrix
    from bench.pretrain.probe import linear_probe
    from corpora import decode_images, read_corpus

    corpus = read_corpus(probe_root)
    size = s["pretrain"]["settings"]["image_size"]
    images, records, _ = decode_images(corpus, size, progress=progress)
    labels, mask, names = label_matrix(records, list(corpus.label_names))
    groups = [r.patient_id for r in records]
    results = {}
    for init, name in inits:
        seed_everything(0)
        encoder, _ = wr.load_encoder(init, s["arch"])
        results[name or init] = linear_probe(encoder, images, labels, mask, names, groups, image_size=size)
    return {"labels": names, "n_images": len(records), "corpus": str(probe_root), "results": results}


def run_demo(out: Path, report: Path, quick: bool = False, progress: bool = True) -> Path:
    import weights_registry as wr
    from bench.reporting import write_report
    from bench.reporting.pretraining import pretraining_section
    from bench.util import write_json_atomic
    from tasks import get_task

    s = demo_settings(quick)
    task = get_task(s["task"])
    t0 = time.perf_counter()
    data_root, corpus_root, probe_root = _datasets(out, s, progress)
    announce_synthetic(out / "data")
    _check_disjoint(task, data_root, corpus_root, s, progress)
    encoders, pretrainings = _pretrain_plan(out, corpus_root, s)
    inits = [("random", None)]
    if wr.is_cached("imagenet", s["arch"]):
        inits.append(("imagenet", None))
    inits += [(str(path), method) for method, path in encoders.items()]
    configs = demo_configs(out, data_root, inits, s)
    runs: dict[str | None, list[RunConfig]] = {}
    for cfg in configs:
        # a method pretrained now: all its runs (a record left is of an earlier encoder);
        # else the sweep's resume rule (complete, and the checkpoint it loaded unchanged)
        if cfg.init_name in pretrainings or resume_action(cfg, retry_failed=True) is not None:
            runs.setdefault(cfg.init_name, []).append(cfg)
    # pretrainings and runs in the sweep's local worker processes, one torch thread each:
    # small models at 64 px use two cores better as two jobs than as one
    workers = max(1, int(s.get("workers") or 1))
    t_pretrain, pretrain_errors, failed = _schedule(pretrainings, runs, workers, progress)
    encoders = {m: path for m, path in encoders.items() if m not in pretrain_errors}
    failed += sum(len(runs.get(m, [])) for m in pretrain_errors)  # not run
    probe = _probe_all(probe_root, [i for i in inits if i[1] not in pretrain_errors], s, progress)
    write_json_atomic(out / "probe.json", probe)
    pre_records = [json.loads((p.parent / "pretrain.json").read_text()) for p in encoders.values()]
    section = pretraining_section(pre_records, probe, report)
    written = write_report(out / "records", report, extra_sections=[section])
    print(f"demo: {len(configs) - failed}/{len(configs)} runs complete in {time.perf_counter() - t0:.0f}s "
          f"(pretraining {t_pretrain:.0f}s of worker time); report {written}", file=sys.stderr)  # fmt: skip
    if pretrain_errors:
        from bench.pretrain.train import PretrainFailed

        names = ", ".join(f"{m} ({type(e).__name__}: {e})" for m, e in pretrain_errors.items())
        raise PretrainFailed(f"demo: pretraining failed for {names}; the report {written} leaves it out", {})
    return written
