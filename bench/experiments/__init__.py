"""Owns: experiments made of many runs: sweeps, their plan and execution, and their checks.

- :mod:`~bench.experiments.sweep`: the sweep file (``bench sweep CONFIG.yaml``): schema,
  parsing, expansion into runs, lr-search cells.
- :mod:`~bench.experiments.plan`: what to skip, run or wait for, and the lr choice: a
  pure function of the sweep and the records on disk (``--dry-run``, ``bench status``).
- :mod:`~bench.experiments.run`: ``run_sweep``: executes the plan's stages.
- :mod:`~bench.experiments.executors`: where runs execute (``local``, ``ray``, ``slurm``).
- :mod:`~bench.experiments.lock`: one ``bench sweep`` per ``out`` folder on a machine.
- :mod:`~bench.experiments.status`: ``bench status`` (done, running, failed, missing).
- :mod:`~bench.experiments.baseline` and :mod:`~bench.experiments.compare`: the
  baseline file and ``bench compare``, the regression check against it.
- :mod:`~bench.experiments.demo`: ``bench demo``, the benchmark in miniature.

Single runs are :mod:`bench.engine`; reading and aggregating records for reports is
:mod:`bench.reporting`.
"""
