"""Metrics, the threshold table and the PNG plots a training or evaluation run writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from appliance.card import LABELS


def rates(p_without: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Door-facing rates at one threshold. TNR: share of unmasked faces caught; FNR: share of masked faces
    wrongly flagged (the published convention, where 'positive' is with_mask)."""
    flagged = p_without >= threshold
    unmasked = labels == LABELS.index("without_mask")
    masked = ~unmasked
    return {
        "threshold": round(float(threshold), 4),
        "accuracy": float((flagged == unmasked).mean()) if len(labels) else float("nan"),
        "tnr": float(flagged[unmasked].mean()) if unmasked.any() else float("nan"),
        "fnr": float(flagged[masked].mean()) if masked.any() else float("nan"),
        "n": int(len(labels)),
        "n_without_mask": int(unmasked.sum()),
        "n_with_mask": int(masked.sum()),
    }


def threshold_table(p_without: np.ndarray, labels: np.ndarray, steps=None) -> list[dict[str, float]]:
    steps = steps if steps is not None else np.round(np.arange(0.1, 0.95, 0.1), 2)
    return [rates(p_without, labels, t) for t in steps]


def crop_metrics(p_without: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

    pred = (p_without >= threshold).astype(int)
    return {
        **rates(p_without, labels, threshold),
        "roc_auc": float(roc_auc_score(labels, p_without)),
        "confusion": confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
        "report": classification_report(labels, pred, labels=[0, 1], target_names=list(LABELS),
                                        output_dict=True, zero_division=0),
    }


def print_table(rows: list[dict], keys=("threshold", "accuracy", "tnr", "fnr")) -> str:
    lines = ["  ".join(f"{k:>9}" for k in keys)]
    lines += ["  ".join(f"{row[k]:>9.4f}" if isinstance(row[k], float) else f"{row[k]:>9}" for k in keys)
              for row in rows]
    return "\n".join(lines)


def save_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(histories: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    merged: dict[str, list] = {}
    for h in histories:
        for k, v in h.items():
            merged.setdefault(k, []).extend(v)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for k in (metric, f"val_{metric}"):
            if k in merged:
                ax.plot(range(1, len(merged[k]) + 1), merged[k], label=k)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(confusion, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center")
    ax.set_xticks([0, 1], LABELS)
    ax.set_yticks([0, 1], LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """ROC of 'unmasked caught' (TNR) against 'masked flagged' (FNR), one curve per named classifier."""
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (p, labels) in curves.items():
        fpr, tpr, _ = roc_curve(labels, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("masked faces flagged (FNR)")
    ax.set_ylabel("unmasked faces caught (TNR)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
