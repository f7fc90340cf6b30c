"""Owns: the report section of a pretraining run (``bench demo``, or any caller with
``pretrain.json`` records): what each method trained on and how fast, its loss curve
(figure ``<stem>_pretraining_loss.png``), and the linear-probe AUC of every init's
frozen features on held-out finding labels, so a reader sees whether each method
learned something before reading the downstream table."""

from __future__ import annotations

from pathlib import Path

from bench.reporting.markdown import md_table, text


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """One panel per method: training loss per epoch (losses of different methods are not comparable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in records if r.get("history")]
    if not records:
        return None
    fig = Figure(figsize=(2.6 * len(records), 2.4), layout="constrained")
    FigureCanvasAgg(fig)
    for k, rec in enumerate(records, 1):
        ax = fig.add_subplot(1, len(records), k)
        epochs = [h["epoch"] for h in rec["history"]]
        ax.plot(epochs, [h["loss"] for h in rec["history"]], marker="o", ms=3)
        ax.set_title(rec["method"], fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 1:
            ax.set_ylabel("training loss", fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def _method_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        h, s, st = r.get("history") or [], r["settings"], r.get("stats") or {}
        extra = []
        if "positive_pairs" in st:
            pp = st["positive_pairs"]
            extra.append(f"positives {pp.get('positives')}, laterality {pp.get('laterality')}: "
                         f"{pp.get('fallback_fraction', 0):.0%} fell back to a second view")  # fmt: skip
        if "text_encoder" in st:
            te = st["text_encoder"]
            extra.append(f"text: {te.get('source')} {te.get('model_type')} ({te.get('n_layers')} layers, "
                         f"{te.get('pooling')} pooling)")  # fmt: skip
        if "labels" in st:
            extra.append("labels: " + ", ".join(st["labels"]["names"]))
        rows.append([f"`{r['method']}`", str(len(h)), text(h[-1]["steps"] * s["batch_size"] if h else None),
                     f"{h[0]['loss']:.3f} → {h[-1]['loss']:.3f}" if h else "-",
                     f"{sum(x['images_per_s'] for x in h) / len(h):.0f}" if h else "-",
                     f"{s['lr']:g} ({s['optimizer']})", "; ".join(extra) or "-"])  # fmt: skip
    return rows


def _probe_table(probe: dict) -> str:
    labels = probe["labels"]
    rows = []
    for init, res in probe["results"].items():
        aucs = [res["auc"].get(name) for name in labels]
        rows.append([f"`{init}`", *(f"{a:.3f}" if a is not None else "-" for a in aucs),
                     f"**{res['mean_auc']:.3f}**" if res["mean_auc"] is not None else "-"])  # fmt: skip
    return md_table(["init", *labels, "mean AUC"], rows, align=[":---", *["---:"] * (len(labels) + 1)])


def pretraining_section(records: list[dict], probe: dict | None, out_md: Path) -> str:
    """``## Pretraining``: per-method table, loss-curve figure, linear-probe AUCs."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    parts = ["## Pretraining", ""]
    if records:
        r0 = records[0]
        data = r0["data"]
        parts += [
            f"Every method pretrained the same `{r0['settings']['arch']}` on the same data "
            f"({data['summary'].splitlines()[0]}) "
            f"at {r0['settings']['image_size']} px with the same budget; loss settings follow each "
            "method's recipe (`bench pretrain --help`).",
            "",
            md_table(["method", "epochs", "images/epoch", "loss first → last", "images/s", "lr", "notes"],
                     _method_rows(records), align=[":---", "---:", "---:", "---:", "---:", "---:", ":---"]),  # fmt: skip
            "",
        ]
        fig = plot_losses(records, out_md.parent / f"{out_md.stem}_pretraining_loss.png")
        if fig is not None:
            parts += [f"![Training loss per epoch of each method]({fig.name})", ""]
    if probe:
        parts += [
            f"**Linear probe.** A logistic regression on each init's frozen, globally pooled "
            f"features of {probe['n_images']} images of a second synthetic corpus that no "
            "pretraining saw, trained on 70% of its patients and scored by ROC AUC on the other "
            "30% (0.5 = chance). It asks whether the features separate the findings before any "
            "downstream training; it is not a downstream result.",
            "",
            _probe_table(probe),
        ]
    return "\n".join(parts)
