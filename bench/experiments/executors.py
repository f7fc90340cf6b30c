"""Owns: where the runs of a sweep execute: ``local``, ``ray`` or ``slurm`` (``--executor``).

Every executor takes a list of jobs ``(RunConfig, lr_selection or None)`` and yields one
:class:`Outcome` per job as it finishes. Each job calls :func:`run_one` wherever it
runs, which calls :func:`bench.engine.runner.execute`; the record is written by that process
to ``cfg.out``, so ``ray`` and ``slurm`` need ``out`` (and the data) on a filesystem
that every node shares, and cxrbench installed on every node.

- ``local``: in this process, one run after another; ``workers: N`` (``--workers``)
  runs N worker processes instead, each pinned to ``cuda:i`` (i = worker index modulo
  the GPUs) when there are GPUs, else on the CPU with ``cores // N`` torch threads.
  ``runs_per_gpu: N`` (``--runs-per-gpu``) sets the workers to N x the visible GPUs, so
  N small runs share each GPU (:func:`local_workers`); without GPUs it is an error.
- ``ray``: one Ray task per run with ``num_cpus``/``num_gpus`` (default 1 CPU, 0 GPU).
  ``address`` (``--address``): ``auto`` (the running cluster) or ``host:port``; none
  starts a local Ray instance with ``cluster_cpus`` CPUs (default: all). When Ray is
  already initialized in this process, that instance is used and left running.
- ``slurm``: one submitit job per run, submitted as a job array; ``timeout_min``,
  ``mem_gb``, ``cpus_per_task``, ``gpus_per_node``, ``nodes``, ``tasks_per_node``,
  ``name`` and the shorthands ``partition``, ``account``, ``qos``, ``constraint``,
  ``array_parallelism``, ``setup`` are passed on, as is any ``slurm_*`` parameter;
  logs and pickles go to ``folder`` (default ``<out>/.submitit``). ``cluster: local``
  (``--slurm-local``) uses submitit's local executor (subprocesses, no cluster),
  ``cluster: debug`` runs in this process.

``threads`` sets ``torch.set_num_threads`` in each run (default: torch's own choice for
sequential local runs, ``cores // workers`` for local workers, ``num_cpus`` for ray,
``cpus_per_task`` for slurm). CPU training is repeatable for a given seed *and* thread
count, so records of different executors match exactly when ``threads`` is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.engine.config import RunConfig
from bench.engine.records import read_record, record_path, write_json_atomic

Job = tuple[RunConfig, "dict | None"]
Executor = Callable[[list[Job]], Iterator["Outcome"]]
SLURM_SHORTHANDS = tuple("partition account qos constraint array_parallelism setup".split())
SUBMITIT_GENERIC = tuple(
    "timeout_min mem_gb nodes cpus_per_task gpus_per_node tasks_per_node name".split()
)
EXECUTOR_KEYS = {  # parameters under `executor.<kind>` in a sweep file
    "local": ("workers", "runs_per_gpu", "threads"),
    "ray": ("address", "num_cpus", "num_gpus", "cluster_cpus", "threads"),
    # plus any slurm_* parameter of submitit's SlurmExecutor
    "slurm": ("folder", "cluster", "threads", *SLURM_SHORTHANDS, *SUBMITIT_GENERIC),
}
EXECUTORS = tuple(EXECUTOR_KEYS)


@dataclass
class Outcome:
    """What happened to one run. ``status`` is the record's status, or ``error`` when no
    record was written (bad input caught before training, or a worker that died)."""

    run_id: str
    status: str
    error: str | None = None
    action: str = "ran"  # ran, skipped (its record said so) or reused (lr-search copy)
    stage: str = "runs"  # runs or lr_search
    metric: str | None = None
    value: float | None = None
    wall_s: float | None = None

    @classmethod
    def from_record(cls, rec: dict, action: str = "ran", stage: str = "runs") -> Outcome:
        metric = rec.get("primary_metric")
        test = (rec.get("metrics") or {}).get("test") or {}
        return cls(
            run_id=rec["run_id"],
            status=rec.get("status", "unknown"),
            error=rec.get("error"),
            action=action,
            stage=stage,
            metric=metric,
            value=test.get(metric),
            wall_s=(rec.get("timing") or {}).get("wall_s"),
        )

    @classmethod
    def from_disk(cls, cfg: RunConfig, action: str, stage: str = "runs") -> Outcome:
        try:
            return cls.from_record(read_record(record_path(cfg.out, cfg.run_id)), action, stage)
        except (OSError, ValueError) as e:
            return cls(cfg.run_id, "error", f"record unreadable: {e}", action, stage)

    def line(self) -> str:
        text = f"{self.run_id} {self.status}"
        if self.value is not None:
            text += f" {self.metric} {self.value:.4f}"
        if self.wall_s is not None:
            text += f" ({self.wall_s:.1f}s)"
        if self.error and self.status != "complete":
            text += f": {self.error}"
        return text


def run_one(
    cfg: RunConfig,
    lr_selection: dict | None = None,
    *,
    threads: int | None = None,
    cwd: str | None = None,
    device: str | None = None,
) -> Outcome:
    """Run one configuration wherever this is called; never raises for a failed run.

    ``cwd``: directory that relative paths of ``cfg`` are relative to (the sweep's);
    ``device`` replaces ``device: auto``; ``lr_selection`` is added to the record.
    """
    import torch

    from bench.engine.runner import RunFailed, execute

    if cwd:
        os.chdir(cwd)
    if device and cfg.device == "auto":
        cfg = dataclasses.replace(cfg, device=device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        rec = execute(cfg)
    except RunFailed as e:
        rec = e.record
    except Exception as e:  # noqa: BLE001 - raised before any record was written
        return Outcome(cfg.run_id, "error", f"{type(e).__name__}: {e}")
    finally:
        torch.set_num_threads(before)
    if lr_selection is not None:
        rec["lr_selection"] = lr_selection
        write_json_atomic(record_path(cfg.out, cfg.run_id), rec)
    return Outcome.from_record(rec)


def _failed(cfg: RunConfig, exc: BaseException) -> Outcome:
    return Outcome(cfg.run_id, "error", f"{type(exc).__name__}: {exc}")


def _check(params: dict, allowed, kind: str) -> None:
    for key in params:
        if key not in allowed and not (kind == "slurm" and str(key).startswith("slurm_")):
            raise ValueError(
                f"executor {kind}: unknown parameter {key!r}; allowed: {', '.join(allowed)}"
            )


def get_executor(kind: str, params: dict, name: str = "bench") -> Executor:
    """The executor ``kind`` with its parameters (from the YAML, overridden by CLI flags)."""
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    _check(params, EXECUTOR_KEYS[kind], kind)
    if kind == "local":
        workers = local_workers(params)  # checked now, before any run
        return lambda jobs: run_local(jobs, workers=workers, threads=params.get("threads"))
    if kind == "ray":
        return lambda jobs: run_ray(jobs, **params)
    return lambda jobs: run_slurm(jobs, name=name, **params)


# ---------------------------------------------------------------- local


def visible_gpus() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _positive_int(value, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    return value


def local_workers(params: dict) -> int:
    """Worker processes of the local executor: ``workers`` (default 1), or
    ``runs_per_gpu`` x the visible GPUs; ``runs_per_gpu`` without GPUs, or with
    ``workers``, is an error (one line)."""
    workers, per_gpu = params.get("workers"), params.get("runs_per_gpu")
    if per_gpu is None:
        return workers or 1  # run_local refuses a negative count
    per_gpu = _positive_int(per_gpu, "--runs-per-gpu")
    if workers is not None:
        raise ValueError("--workers and --runs-per-gpu: give one of them (--runs-per-gpu N runs N x GPUs workers)")
    n_gpus = visible_gpus()
    if not n_gpus:
        raise ValueError("--runs-per-gpu needs GPUs; use --workers on CPU")
    return per_gpu * n_gpus


def worker_device(index: int, n_gpus: int) -> str | None:
    """The device of local worker ``index``: ``cuda:(index % GPUs)``, None (auto) without GPUs."""
    return f"cuda:{index % n_gpus}" if n_gpus else None


_WORKER: dict = {}


PARENT_POLL_S = 1.0  # how often a local worker checks that its sweep (or demo) still runs
ORPHAN_GRACE_S = 30.0  # then how long a call it interrupted may take to record itself


def _init_worker(slots, threads: int, n_gpus: int) -> None:
    import torch

    index = slots.get()
    _WORKER["device"] = worker_device(index, n_gpus)
    torch.set_num_threads(threads)
    watch_parent(os.getppid())


def watch_parent(parent_pid: int, *, poll_s: float = PARENT_POLL_S, grace_s: float = ORPHAN_GRACE_S):
    """Stop this worker when the process that started it is gone (killed with SIGKILL, say).

    Without it, an orphaned worker would finish its run and write its record while a
    resumed sweep, which holds the folder's lock again, reruns the same run in the same
    place (and then wait for work forever). A daemon thread polls the parent pid; once it
    changed, a worker inside :func:`_run_in_worker` gets a KeyboardInterrupt in its main
    thread: the runner records the run ``failed: interrupted`` (a resume runs it again)
    and the worker exits, or is exited after ``grace_s``. Any other worker exits at once,
    as under SIGKILL: idle, or in another call such as a demo pretraining, which resumes
    from its last ``state.pt``.
    """
    import _thread
    import threading
    import time

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        _WORKER["orphaned"] = True
        if not _WORKER.get("busy"):
            os._exit(1)
        _thread.interrupt_main()
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="cxrbench-parent-watch", daemon=True)
    thread.start()
    return thread


def _run_in_worker(cfg: RunConfig, lr_selection: dict | None) -> Outcome:
    _WORKER["busy"] = True
    try:
        return run_one(cfg, lr_selection, device=_WORKER.get("device"))
    except KeyboardInterrupt:
        if _WORKER.get("orphaned"):  # its record says interrupted; nobody waits for the outcome
            os._exit(1)
        raise
    finally:
        _WORKER["busy"] = False


def run_local(
    jobs: list[Job], *, workers: int = 1, threads: int | None = None
) -> Iterator[Outcome]:
    """Sequentially in this process, or in ``workers`` processes (one per GPU if any)."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or len(jobs) <= 1:
        for cfg, sel in jobs:
            yield run_one(cfg, sel, threads=threads)
        return

    from concurrent.futures import as_completed

    with local_pool(workers, threads) as pool:
        futures = {pool.submit(_run_in_worker, cfg, sel): cfg for cfg, sel in jobs}
        for fut in as_completed(futures):
            yield outcome_of(fut, futures[fut])


@contextlib.contextmanager
def local_pool(workers: int, threads: int | None = None):
    """The local executor's worker processes (spawned, ``threads`` torch threads each,
    default ``cores // workers``; worker i on ``cuda:(i % GPUs)`` when there are GPUs), as a
    ``ProcessPoolExecutor``: submit :func:`_run_in_worker` (a run) or any picklable call
    (``bench demo`` submits its pretrainings too). Leaving cancels what has not started."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n_gpus = visible_gpus()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads, n_gpus))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stop_workers(pool) -> None:
    """Stop a :func:`local_pool`'s worker processes now: what runs in them is abandoned
    (its record is left as the run left it), what has not started is cancelled."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(10)


def outcome_of(fut, cfg: RunConfig) -> Outcome:
    """The outcome of a finished :func:`_run_in_worker` future; a worker that died is an error."""
    try:
        return fut.result()
    except Exception as e:  # noqa: BLE001 - a worker died (BrokenProcessPool, ...)
        return _failed(cfg, e)


# ---------------------------------------------------------------- ray


def run_ray(
    jobs: list[Job],
    *,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    cluster_cpus: int | None = None,
    threads: int | None = None,
) -> Iterator[Outcome]:
    """One Ray task per run; records are written by the workers to the shared ``out``."""
    if not jobs:
        return
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'cxrbench[sweep]'") from None

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=cluster_cpus, include_dashboard=False)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_one)
    threads = threads or max(1, int(num_cpus))
    refs = {task.remote(cfg, sel, threads=threads, cwd=os.getcwd()): cfg for cfg, sel in jobs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task crashed or its worker died
                    yield _failed(refs[ref], e)
    finally:
        for ref in pending:  # Ctrl-C: interrupt what still runs (its record says so)
            ray.cancel(ref)
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- slurm (submitit)


def run_slurm(
    jobs: list[Job],
    *,
    name: str = "bench",
    folder: str | None = None,
    cluster: str | None = None,
    threads: int | None = None,
    **params,
) -> Iterator[Outcome]:
    """One submitit job per run (a Slurm job array); ``cluster: local`` runs them locally."""
    if not jobs:
        return
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "the slurm executor needs submitit: pip install 'cxrbench[sweep]'"
        ) from None

    folder = folder or str(Path(jobs[0][0].out) / ".submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {f"slurm_{k}" if k in SLURM_SHORTHANDS else k: v for k, v in params.items()}
    params.setdefault("name", f"bench-{name}")
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError) as e:
        raise ValueError(f"executor slurm: {e}") from None
    threads = threads or params.get("cpus_per_task")
    cwd = os.getcwd()
    with executor.batch():
        submitted = [
            (executor.submit(run_one, cfg, sel, threads=threads, cwd=cwd), cfg) for cfg, sel in jobs
        ]
    print(
        f"submitted {len(submitted)} jobs ({executor.cluster}); logs in {folder}", file=sys.stderr
    )
    done: set[int] = set()
    try:
        for job, cfg in submitted:
            try:
                outcome = job.result()
            except Exception as e:  # noqa: BLE001 - job failed, timed out or was cancelled
                outcome = _failed(cfg, e)
                outcome.error += f" (job {job.job_id}, log {job.paths.stderr})"
            done.add(id(job))
            yield outcome
    finally:
        for job, _ in submitted:  # Ctrl-C: cancel the jobs not collected yet
            if id(job) not in done and not job.done():
                job.cancel(check=False)
