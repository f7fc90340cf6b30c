"""Owns: the ``bench report`` output: markdown reports, table exports and figures built
from run records (``bench report --runs DIR --out FILE.md``).

Per task the report has a paper-style table (rows = init, columns grouped by protocol
then label fraction, cells ``mean ± CI half-width (n=k)``, best per column bold, cells
inside the best's 95% CI underlined), the same table as tidy CSV and booktabs LaTeX
beside the markdown, secondary metrics, a label-efficiency figure, the learning rate
behind each cell (with the validation scores of ``bench sweep``'s lr search when
records carry ``lr_selection``) and example predictions; then runs that did not
complete, the initializations, the software and settings found in the records and a
per-run appendix. Only ``status == "complete"`` runs enter the means. Synthetic-data
runs make the report say so loudly, and runs whose initialization saw the evaluation
data (``weights.leakage``) are marked with a dagger and never marked best or within-CI.
Task and metric names come from the task registry (:mod:`tasks.registry`).

Modules: :mod:`~bench.reporting.frame` (reading records, the flat frame, aggregation
over seeds; reused by ``bench compare`` and ``bench status``),
:mod:`~bench.reporting.names` (display order and metric notes),
:mod:`~bench.reporting.markdown` (markdown building blocks),
:mod:`~bench.reporting.tables` (main, secondary and learning-rate tables),
:mod:`~bench.reporting.exports` (CSV and LaTeX), :mod:`~bench.reporting.figures`
(label efficiency), :mod:`~bench.reporting.examples` (example predictions),
:mod:`~bench.reporting.sections` (the other sections) and
:mod:`~bench.reporting.compose` (:func:`write_report`).
"""

from bench.reporting.compose import write_report
from bench.reporting.frame import (
    GROUP,
    KEYS,
    aggregate,
    load_records,
    read_records,
    records_to_frame,
)

__all__ = [
    "GROUP",
    "KEYS",
    "aggregate",
    "load_records",
    "read_records",
    "records_to_frame",
    "write_report",
]
