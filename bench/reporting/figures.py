"""Owns: the label-efficiency figure of one task (test primary metric against the label
fraction, one panel per protocol, one line per init, 95% t-interval error bars)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.metrics.stats import summarize
from bench.reporting.markdown import pct
from bench.reporting.names import INIT_ORDER, PROTOCOL_ORDER, metric_order, ordered

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _t_interval(values) -> tuple[float, float]:
    """The 95% t-interval for the figure, clipped to [0, 1] where every metric lives
    (with few seeds the interval can reach past the metric's range; tables keep it)."""
    s = summarize(values)
    if s["ci_low"] is None:
        return (math.nan, math.nan)
    return (max(s["ci_low"], 0.0), min(s["ci_high"], 1.0))


def _panels(d: pd.DataFrame) -> list[tuple[str, str]]:
    """(protocol, metric) per panel, in display order."""
    metrics = metric_order()
    return [
        (p, m)
        for p in ordered(d["protocol"], PROTOCOL_ORDER)
        for m in ordered(d.loc[d["protocol"] == p, "primary_metric"], metrics)
    ]


def _draw_panel(ax, sub: pd.DataFrame, style: dict, fractions: list, title: str, metric: str):
    import seaborn as sns
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    sns.lineplot(
        data=sub, x="fraction", y="test_primary", hue="init", style="init",
        hue_order=[i for i in style["inits"] if i in set(sub["init"])],
        palette=style["palette"], markers=style["markers"], dashes=False,
        errorbar=_t_interval, err_style="bars", err_kws={"capsize": 3}, legend=False, ax=ax,
    )  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([pct(f) for f in fractions])
    ax.set_xlabel("label fraction")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.set_xlim(fractions[0] / 1.6, fractions[-1] * 1.6)
    ax.grid(alpha=0.3)


def plot_label_efficiency(df: pd.DataFrame, task: str, path: str | Path) -> Path | None:
    """PNG of the test primary metric against the label fraction (log x) for one task:
    one panel per protocol, one line per init, error bars = Student-t 95% CI over seeds
    clipped to the metrics' range [0, 1].
    Drawn on an Agg canvas (no pyplot state). Returns None if there is nothing to plot."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    d = df[(df["task"] == task) & (df["status"] == "complete")].dropna(subset=["test_primary"])
    if d.empty:
        return None
    mixed = d["primary_metric"].nunique() > 1
    panels = _panels(d)
    inits = ordered(d["init"], INIT_ORDER)
    style = {
        "inits": inits,
        "palette": dict(zip(inits, sns.color_palette(n_colors=len(inits)))),
        "markers": dict(zip(inits, (list(MARKERS) * len(inits))[: len(inits)])),
    }
    fig = Figure(figsize=(max(6.5, 3.6 * len(panels) + 1.8), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharex=True, sharey=not mixed, squeeze=False)[0]
    fractions = sorted(d["fraction"].unique())
    for ax, (proto, metric) in zip(axes, panels):
        sub = d[(d["protocol"] == proto) & (d["primary_metric"] == metric)]
        title = f"{proto} ({metric})" if mixed else proto
        _draw_panel(ax, sub, style, fractions, title, metric)
    handles = [
        Line2D([], [], color=style["palette"][i], marker=style["markers"][i], label=i)
        for i in inits
    ]
    fig.legend(handles=handles, title="init", loc="outside right center")
    synth = " — SYNTHETIC DATA" if d["synthetic"].any() else ""
    fig.suptitle(f"{task}: label efficiency (mean and 95% CI over seeds, clipped to [0, 1]){synth}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


__all__ = ["plot_label_efficiency"]
