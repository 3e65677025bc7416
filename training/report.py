"""Metrics, the threshold table and the PNG plots a training or evaluation run writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from appliance.seeing.card import LABELS

MASKED, UNMASKED, INCORRECT = (LABELS.index(n) for n in ("with_mask", "without_mask", "incorrect_mask"))
MIN_TNR = 0.97  # the door's rule: catch at least 97% of unmasked faces, then stop as few masked ones as possible
# ... and, where the validation faces include incorrectly worn masks, stop at least this share of them too: without
# it the rule gave them up for masked faces (on scenes-ilc's corrected labels it chose 0.64, which stops 6 fewer of
# its 76 incorrect masks than the shipped 0.56).
MIN_INCORRECT = 0.80
# ... but only where there are enough of them for a share to mean something (below 20, one face moves it by more
# than 0.05), and only at a cost to masked faces of at most MAX_FNR (one in 20): with a handful of incorrect masks
# scored low, it would otherwise pick a threshold that stops most masked customers.
MIN_INCORRECT_FACES = 20
MAX_FNR = 0.05


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else float("nan")


def rates(p_not_masked: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Door-facing rates at one threshold, `labels` indexing LABELS. A face is flagged when p(not properly masked)
    >= threshold. TNR: share of without_mask faces flagged; FNR: share of with_mask faces flagged (the published
    convention, where 'positive' is with_mask); incorrect_stopped: share of incorrect_mask faces flagged (NaN when
    there are none); accuracy: flagged exactly when not properly masked."""
    p_not_masked, labels = np.asarray(p_not_masked, float), np.asarray(labels, int)
    flagged = p_not_masked >= threshold
    return {
        "threshold": round(float(threshold), 4),
        "accuracy": _share(flagged == (labels != MASKED)),
        "tnr": _share(flagged[labels == UNMASKED]),
        "fnr": _share(flagged[labels == MASKED]),
        "incorrect_stopped": _share(flagged[labels == INCORRECT]),
        "n": int(len(labels)),
        "n_without_mask": int((labels == UNMASKED).sum()),
        "n_with_mask": int((labels == MASKED).sum()),
        "n_incorrect_mask": int((labels == INCORRECT).sum()),
    }


def threshold_table(p_not_masked: np.ndarray, labels: np.ndarray, steps=None) -> list[dict[str, float]]:
    steps = steps if steps is not None else np.round(np.arange(0.1, 0.95, 0.1), 2)
    return [rates(p_not_masked, labels, t) for t in steps]


def choose_threshold(p_not_masked: np.ndarray, labels: np.ndarray, min_tnr: float = MIN_TNR,
                     min_incorrect: float = MIN_INCORRECT) -> dict:
    """The door's threshold: of 0.01..0.99, those that catch at least `min_tnr` of the without_mask faces and, when
    there are at least MIN_INCORRECT_FACES incorrect_mask faces, at least `min_incorrect` of them at an FNR of at
    most MAX_FNR, the one that flags the fewest with_mask faces (ties: the one that catches the most, then the
    lowest, which leaves the most room for unmasked faces that score lower on photos never seen). When no threshold
    keeps the incorrect masks so, the same by TNR alone; when none reaches `min_tnr`, the one with the highest TNR
    (ties: lowest FNR, then lowest). Returns its rates plus `rule`, `met` (TNR reached) and, where incorrect masks
    counted, `incorrect_met`."""
    rows = threshold_table(p_not_masked, labels, np.round(np.arange(0.01, 1.0, 0.01), 2))
    counted = int((np.asarray(labels) == INCORRECT).sum()) >= MIN_INCORRECT_FACES
    tnr_ok = [r for r in rows if r["tnr"] >= min_tnr]
    both = [r for r in tnr_ok if r["incorrect_stopped"] >= min_incorrect and r["fnr"] <= MAX_FNR] if counted else []
    best = (min(both or tnr_ok, key=lambda r: (r["fnr"], -r["tnr"], r["threshold"])) if tnr_ok
            else max(rows, key=lambda r: (r["tnr"], -r["fnr"], -r["threshold"])))
    also = (f" and incorrect masks stopped >= {min_incorrect} at FNR <= {MAX_FNR} (else by TNR alone)"
            if counted else "")
    out = {**best, "met": bool(tnr_ok),
           "rule": f"of thresholds 0.01..0.99, the lowest FNR with TNR >= {min_tnr}{also} (else the highest TNR)"}
    if counted:
        out["incorrect_met"] = bool(both)
    return out


def crop_metrics(p_not_masked: np.ndarray, labels: np.ndarray, threshold: float,
                 probs: np.ndarray | None = None, class_labels: tuple[str, ...] | None = None) -> dict:
    """Rates and ROC AUC of the door decision (not properly masked against with_mask); with `probs` (N x classes,
    in `class_labels` order) also the per-class report and confusion matrix of the model's most likely class."""
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

    labels = np.asarray(labels, int)
    truth = (labels != MASKED).astype(int)
    out: dict[str, Any] = {**rates(p_not_masked, labels, threshold),
           "roc_auc": float(roc_auc_score(truth, p_not_masked)) if 0 < truth.sum() < len(truth) else float("nan")}
    pred = (np.asarray(p_not_masked) >= threshold).astype(int)
    out["confusion_door"] = confusion_matrix(truth, pred, labels=[0, 1]).tolist()
    if probs is not None and class_labels is not None:
        idx = [LABELS.index(n) for n in class_labels]
        pred_cls = np.array(idx)[np.argmax(probs, axis=1)]
        present = sorted(set(idx) | set(labels.tolist()))
        names = [LABELS[i] for i in present]
        out["confusion"] = confusion_matrix(labels, pred_cls, labels=present).tolist()
        out["confusion_labels"] = names
        out["report"] = classification_report(labels, pred_cls, labels=present, target_names=names,
                                              output_dict=True, zero_division=0)
    else:
        out["confusion"] = out["confusion_door"]
        out["confusion_labels"] = ["with_mask", "not properly masked"]
    return out


def print_table(rows: list[dict], keys=("threshold", "accuracy", "tnr", "fnr", "incorrect_stopped")) -> str:
    keys = [k for k in keys if any(k in row and row[k] == row[k] for row in rows)]  # drop all-NaN columns
    lines = ["  ".join(f"{k:>9}" for k in keys)]
    lines += ["  ".join(f"{row[k]:>9.4f}" if isinstance(row[k], float) else f"{row[k]:>9}" for k in keys)
              for row in rows]
    return "\n".join(lines)


def save_json(path: Path, data) -> None:
    """Strict JSON: rates over no faces (NaN) are written as null."""
    from appliance.seeing.card import finite

    Path(path).write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")


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


def plot_confusion(confusion: list[list[int]], path: Path, names: list[str] | None = None) -> None:
    plt = pyplot()
    n = len(confusion)
    names = names or list(LABELS[:n])
    fig, ax = plt.subplots(figsize=(1.5 * n + 1.5, 1.3 * n + 1.4))
    ax.imshow(confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center")
    ax.set_xticks(range(n), names, rotation=20)
    ax.set_yticks(range(n), names)
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
        truth = (np.asarray(labels) != MASKED).astype(int)  # not properly masked is the class the door catches
        if not 0 < truth.sum() < len(truth):
            continue
        fpr, tpr, _ = roc_curve(truth, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("masked faces flagged (FNR)")
    ax.set_ylabel("unmasked faces caught (TNR)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
