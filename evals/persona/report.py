"""Persona-eval outputs: the JSON report and a per-task accuracy bar plot (model vs retest vs random).

The plot is what a person looks at first: one group of bars per task, the human test-retest ceiling and
the seeded random floor next to the model, the headline (equal task weight) in the title, coverage and
the non-comparability caveat in the footer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_NAME = "persona_report.json"
PLOT_NAME = "persona_accuracy.png"
COMPARABILITY_NOTE = (
    "Not comparable to the paper's 71.72% (GPT-4.1-mini, full ~30k-token persona, one call for all items): "
    "Dream sees one question per prompt with the persona cut to fit 2048 tokens."
)


def write_json(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report`` as pretty JSON to ``out_dir/persona_report.json`` (creating the directory)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_per_task(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Grouped bars per task -> PNG path.

    Bars: model with unparseable answers dropped (the paper's convention; absent where every answer of the
    task failed), model with them counted wrong, human test-retest and the seeded random baseline (both on
    all valid cells, i.e. the strict cell set).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dropped, strict = report["metrics"]["dropped"], report["metrics"]["strict"]
    tasks = list(strict["per_task"])
    if not tasks:
        raise ValueError("no valid cells: nothing to plot")
    series = [
        ("model (dropped)", "#1f77b4", [dropped["per_task"].get(t, {}).get("model") for t in tasks]),
        ("model (strict)", "#aec7e8", [strict["per_task"][t]["model"] for t in tasks]),
        ("human test-retest", "#2ca02c", [strict["per_task"][t]["retest"] for t in tasks]),
        ("random (seeded)", "#bbbbbb", [strict["per_task"][t]["random"] for t in tasks]),
    ]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) + 2), 4.8))
    for k, (label, colour, values) in enumerate(series):
        xs = [i + (k - 1.5) * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=label, color=colour)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MAD accuracy")
    ax.set_title(
        f"Persona simulation ({report['config']['variant']}, {report['config']['sampler']}): "
        f"model {_fmt(dropped['overall']['model'])} dropped / {_fmt(strict['overall']['model'])} strict | "
        f"retest {_fmt(strict['overall']['retest'])} | random {_fmt(strict['overall']['random'])}",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    cells = report["metrics"]["cells"]
    fig.text(
        0.01,
        0.01,
        f"coverage {cells['coverage']:.0%} of {cells['valid']} cells; {COMPARABILITY_NOTE}",
        fontsize=6,
        wrap=True,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PLOT_NAME
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
