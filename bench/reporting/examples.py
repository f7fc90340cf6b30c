"""Owns: the example-prediction figures of a report.

Each run keeps a few test images with their targets and predictions in
``<run_id>.examples.npz`` (:mod:`bench.engine.artifacts`). The report draws them for the
best and the worst init of a task (mask overlays for segmentation, boxes for detection),
so a reader can see what the numbers mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.engine.artifacts import load_examples


def draw(rows: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """A grid: one row per (label, examples); green = target, red = prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ncols = max(len(ex["ids"]) for _, ex in rows)
    fig = Figure(figsize=(2.2 * ncols, 2.4 * len(rows)))
    FigureCanvasAgg(fig)
    for r, (label, ex) in enumerate(rows):
        for c in range(ncols):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ex["ids"]):
                ax.axis("off")
                continue
            ax.imshow(ex["images"][c], cmap="gray", vmin=0, vmax=255)
            if ex["kind"] == "segmentation":
                for mask, color in ((ex["targets"][c], "lime"), (ex["predictions"][c], "red")):
                    if mask.any():
                        ax.contour(mask, levels=[0.5], colors=color, linewidths=1.0)
            else:
                b = ex["boxes"][c]
                for x1, y1, x2, y2 in b["target"]:
                    ax.add_patch(
                        Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.2)
                    )
                for (x1, y1, x2, y2), s in zip(b["pred"], b["scores"]):
                    ax.add_patch(
                        Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.0)
                    )
                    ax.text(x1, y1, f"{s:.2f}", color="red", fontsize=6, va="bottom")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(str(ex["ids"][c])[-18:], fontsize=6)
    fig.suptitle(title + "  (green: target, red: prediction)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def example_sections(records: list[dict], runs_dir: Path, out_md: Path) -> list[str]:
    """Markdown sections with example figures for the best and worst init of each task.

    Best/worst: mean test primary metric over complete runs of the cell (protocol,
    fraction) shared by the most inits, preferring finetune at the largest fraction.
    """
    from collections import defaultdict

    sections = []
    complete = [r for r in records if r.get("status") == "complete"]
    for task in sorted({r["task"] for r in complete}):
        runs = [r for r in complete if r["task"] == task]
        cells = defaultdict(lambda: defaultdict(list))
        for r in runs:
            value = (r.get("metrics", {}).get("test") or {}).get(r.get("primary_metric", "dice"))
            if value is not None:
                cells[(r["protocol"], r["fraction"])][r["init"]].append((value, r))
        if not cells:
            continue
        pref = {"finetune": 2, "frozen": 1, "linear": 0}
        cell = max(cells, key=lambda k: (len(cells[k]), pref.get(k[0], -1), k[1]))
        by_init = cells[cell]
        ranked = sorted(by_init, key=lambda i: np.mean([v for v, _ in by_init[i]]), reverse=True)
        chosen = [ranked[0]] + ([ranked[-1]] if len(ranked) > 1 else [])
        rows = []
        for rank, init in zip(("best", "worst"), chosen):
            value, rec = min(by_init[init], key=lambda vr: vr[1]["seed"])
            matches = sorted(Path(runs_dir).rglob(f"{rec['run_id']}.examples.npz"))
            ex = load_examples(matches[0]) if matches else None
            if ex is not None:
                mean = np.mean([v for v, _ in by_init[init]])
                rows.append((f"{rank}: {init}\n{rec['primary_metric']} {mean:.3f}", ex))
        if not rows:
            continue
        protocol, fraction = cell
        png = out_md.parent / f"{out_md.stem}_{task}_examples.png"
        seed = min(r["seed"] for _, r in by_init[chosen[0]])
        draw(rows, png, f"{task}: {protocol}, {fraction:.0%} labels, seed {seed}")
        sections.append(
            f"### {task}: example test predictions\n\n"
            f"Best and worst init for {protocol} at {fraction:.0%} labels (mean test metric over "
            f"seeds; images from the lowest seed's run). Green: target; red: prediction.\n\n"
            f"![{task} examples]({png.name})\n"
        )
    return sections
