"""`mask-train gate NEW --baseline OLD`: may NEW replace OLD at the door? The verdict goes into NEW's card.

Both int8 models are scored the way the appliance runs them (appliance.seeing.classifier, each at its own card's
threshold) on faces cut from labelled boxes (as `mask-train evaluate` does), on fixed validation parts only:

- the by-photo validation part (training.splits) of each shared scene set (`--scenes`, e.g. scenes-ilc), and
- the held-back part of each door's labels (`--door-labels`, the labels.csv `mask-train label` writes), split by
  photo the same way, so never used in training (training takes only the other part of a scene source).

NEW passes only when it is nowhere worse than OLD by more than the tolerance (TNR, FNR and, where there are such
faces, incorrect masks stopped; 0.01 by default) and strictly better on every door's held-back part (lower door
error: (1 - TNR) + FNR, + (1 - incorrect stopped) where there are incorrect masks).

Crop figures at a threshold are not what the door does: the policy weighs each frame's vote by how sure the model
is, so a model as good on crops but less sure of itself (another calibration) can deny fewer unmasked visitors.
With `--visits N` (30 by default; 0: off) both models also judge the same seeded approach visits made from each
shared set's validation part (training.visits, the default config's policy; each frame is rendered and its faces
found once, and both models classify those same faces), and NEW may not deny fewer unmasked or incorrectly masked
visitors, wrongly deny more masked ones, `allow` a visitor not properly masked more often, or leave more visits
without any decision (a face the door never judges; in lock-on-unmasked, let in unjudged when the policy waits), by
more than `--visit-tolerance` visits (1). A model already refused on crops is not run through the visits.

The card keeps the model's sha256 (the model is not touched), so it stays valid; `mask-deploy push` refuses a card
without a passing gate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.seeing.card import card_path_for
from appliance.seeing.classifier import MaskClassifier, load_model
from training import report
from training.evaluate import label_crops, read_scene_labels, scene_part

TOLERANCE = 0.01  # one face in a hundred: below what a validation part of a few hundred faces can resolve
VISITS = 30  # one-person visits per label on each shared set (and a third as many pairs of each kind)
VISIT_SEED = 17  # `mask-train visits`' default: its table for --max-visits N --pairs N//3 is the gate's
VISIT_TOLERANCE = 1  # one visit: a single hard face can flip between two equally good models
# (count, its total, +1 more is better / -1 fewer is better)
VISIT_FIGURES = (("unmasked_denied", "unmasked", +1), ("incorrect_denied", "incorrect", +1),
                 ("masked_denied", "masked", -1), ("not_masked_allowed", None, -1), ("undecided", "visits", -1))
METRICS = (("tnr", +1), ("fnr", -1), ("incorrect_stopped", +1))  # (name, +1 higher is better / -1 lower is)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("new", type=Path, help="the candidate .tflite model (its .json card beside it gets the gate)")
    parser.add_argument("--baseline", type=Path, required=True, help="the model now at the door (.tflite + card)")
    parser.add_argument("--scenes", type=Path, nargs="*", default=[],
                        help="shared scene sets' labels.csv; their by-photo validation parts are scored")
    parser.add_argument("--door-labels", type=Path, nargs="+", required=True,
                        help="each door's labels.csv (from `mask-train label`); their held-back parts are scored, "
                             "and NEW must be better on each")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"how much worse NEW may be on any rate of any part (default {TOLERANCE})")
    parser.add_argument("--visits", type=int, default=VISITS,
                        help=f"one-person approach visits per label made from each --scenes set's validation part, "
                             f"judged by both models through the door's policy (default {VISITS}; 0: no visits)")
    parser.add_argument("--visit-tolerance", type=int, default=VISIT_TOLERANCE,
                        help=f"how many visits worse NEW may be on any door figure (default {VISIT_TOLERANCE})")


def score(model: MaskClassifier, labels_csv: Path) -> dict[str, Any]:
    """The model's door rates, at its own threshold, on the validation part of a labelled set."""
    labels = scene_part(read_scene_labels(labels_csv), labels_csv, "validation")
    ys, probs = label_crops(labels, model.classify_all)
    if len(ys) == 0:
        raise ValueError(f"{labels_csv}: its held-back part has no readable labelled faces")
    p = model.not_masked(probs.reshape(len(ys), model.n_classes))
    r = report.rates(p, ys, model.threshold)
    out = {k: r[k] for k in ("n", "n_with_mask", "n_without_mask", "n_incorrect_mask", "threshold", "tnr", "fnr",
                             "incorrect_stopped", "accuracy")}
    out["error"] = door_error(out)
    return out


def door_error(rates: dict[str, Any]) -> float:
    """Unmasked faces let through + masked faces stopped (+ incorrect masks let through), each as a share."""
    parts = [1.0 - rates["tnr"], rates["fnr"], 1.0 - rates["incorrect_stopped"]]
    return float(sum(v for v in parts if not math.isnan(v)))


def verdict(parts: dict[str, dict[str, Any]], tolerance: float) -> tuple[bool, list[str]]:
    """(passed, reasons): every worse-than-tolerance rate and every door part not improved is a reason."""
    reasons = []
    for name, part in parts.items():
        new, old = part["new"], part["old"]
        for metric, sign in METRICS:
            if math.isnan(new[metric]) or math.isnan(old[metric]):
                continue
            if sign * (old[metric] - new[metric]) > tolerance + 1e-12:
                reasons.append(f"{metric.upper() if metric != 'incorrect_stopped' else metric} on {name} "
                               f"{new[metric]:.3f} is worse than {old[metric]:.3f} by more than {tolerance}")
        if part["role"] == "door" and not new["error"] < old["error"] - 1e-12:
            reasons.append(f"not better on {name}: door error {new['error']:.3f} against {old['error']:.3f}")
    return not reasons, reasons


def visit_verdict(name: str, new: dict[str, int], old: dict[str, int], tolerance: int) -> list[str]:
    """Every door figure (training.visits.door_counts) on which NEW is more than `tolerance` visits worse."""
    reasons = []
    for key, total, sign in VISIT_FIGURES:
        if sign * (old[key] - new[key]) > tolerance:
            of = f"/{new[total]}" if total else ""
            reasons.append(f"{key.replace('_', ' ')} on {name} visits {new[key]}{of} against {old[key]}{of} "
                           f"(more than {tolerance} visit{'s' if tolerance != 1 else ''} worse)")
    return reasons


def door_figures(models: Sequence[MaskClassifier], labels_csv: Path, n: int) -> list[dict[str, int]]:
    """Each model's door figures on `n` seeded one-person visits per label (and n // 3 pairs of each kind) made from
    the validation part of a labelled set, under the default config. One rendering and detection pass: every model
    classifies the same faces of the same frames."""
    from appliance import config
    from appliance.deciding.policy import Policy
    from training import visits

    cfg = config.load(None)
    figures = []
    for run in visits.door_runs(cfg, models, labels_csv, "val", n, n // 3, VISIT_SEED):
        outcomes = [visits.judge(v, run.frames[v.id], Policy(cfg.policy, run.threshold)) for v in run.visits]
        figures.append(visits.door_counts(visits.summarise(outcomes)))
    return figures


def _part_name(labels_csv: Path) -> str:
    return f"{Path(labels_csv).parent.name}/{Path(labels_csv).name}"


def gate(new_path: Path, baseline: Path, scenes: list[Path], doors: list[Path],
         tolerance: float = TOLERANCE, visits: int = VISITS, visit_tolerance: int = VISIT_TOLERANCE) -> dict[str, Any]:
    """Score both models on every part (and, with `visits`, on each shared set's door visits), write the verdict
    into NEW's card (atomically) and return it."""
    if not doors:
        raise ValueError("the gate needs at least one door's labels (--door-labels)")
    if visits > 0:  # before minutes of scoring: a set too small to make visits from is a one-line error now
        from training.visits import Render, plan_set

        for labels_csv in (p for p in scenes if Path(p).is_file()):  # a missing one: scoring says so below
            try:
                plan_set(labels_csv, "val", visits, visits // 3, VISIT_SEED, Render().end)
            except ValueError as exc:
                raise ValueError(f"{exc}; --visits 0 gates without door visits") from None
    new, old = load_model(new_path, 2), load_model(baseline, 2)
    parts: dict[str, dict[str, Any]] = {}
    for role, csvs in (("shared", scenes), ("door", doors)):
        for labels_csv in csvs:
            parts[_part_name(labels_csv)] = {"role": role, "labels": str(labels_csv), "new": score(new, labels_csv),
                           "old": score(old, labels_csv)}
    reasons = verdict(parts, tolerance)[1]
    visit_sets: dict[str, dict[str, Any]] = {}
    judged = visits > 0 and bool(scenes) and not reasons  # a model refused on crops is not worth minutes of visits
    for labels_csv in scenes if judged else []:
        name = _part_name(labels_csv)
        new_figures, old_figures = door_figures([new, old], labels_csv, visits)
        visit_sets[name] = {"new": new_figures, "old": old_figures}
        reasons += visit_verdict(name, visit_sets[name]["new"], visit_sets[name]["old"], visit_tolerance)
    passed = not reasons
    result = {
        "passed": passed,
        "reason": "; ".join(reasons) if reasons else
        "better on every door's held-back part and within the tolerance on every part" +
        (f", and within {visit_tolerance} visit{'s' if visit_tolerance != 1 else ''} on every door figure"
         if judged else ""),
        "tolerance": tolerance,
        "baseline": {"model": str(baseline), "sha256": old.sha256},
        "model_sha256": new.sha256,
        "time": round(time.time(), 3),
        "parts": parts,
        "visits": {"per_label": visits, "pairs": visits // 3, "seed": VISIT_SEED, "tolerance": visit_tolerance,
                   "sets": visit_sets} if judged else None,
    }
    write_gate(card_path_for(new_path), result, new.sha256)
    return result


def write_gate(card_path: Path, result: dict[str, Any], model_sha256: str) -> None:
    """The card with `gate` replaced, written whole or not at all; its sha256 (the model's) is checked, not changed."""
    card = json.loads(Path(card_path).read_text())
    if card.get("sha256") != model_sha256:
        raise ValueError(f"{card_path}: its sha256 is not the scored model's; gate not written")
    card["gate"] = _finite(result)
    tmp = Path(card_path).with_name(f".{Path(card_path).name}.gate.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=_plain, allow_nan=False) + "\n")
    os.replace(tmp, card_path)


def _finite(value: Any) -> Any:
    """NaN (a rate of a class the part has no faces of) as null: the card stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _f(v: float) -> str:
    return "   -  " if math.isnan(v) else f"{v:6.3f}"


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{'part':<34} {'faces':>5}  {'TNR old':>7} {'new':>6}  {'FNR old':>7} {'new':>6}  "
             f"{'incorr old':>10} {'new':>6}  {'error old':>9} {'new':>6}"]
    for name, part in result["parts"].items():
        o, n = part["old"], part["new"]
        label = f"{name} ({part['role']})"
        lines.append(f"{label:<34} {n['n']:>5}  {_f(o['tnr']):>7} {_f(n['tnr'])}  {_f(o['fnr']):>7} {_f(n['fnr'])}  "
                     f"{_f(o['incorrect_stopped']):>10} {_f(n['incorrect_stopped'])}  {_f(o['error']):>9} "
                     f"{_f(n['error'])}")
    for name, v in ((result.get("visits") or {}).get("sets") or {}).items():
        o, n = v["old"], v["new"]
        lines.append(f"{name} visits: unmasked denied {o['unmasked_denied']} -> {n['unmasked_denied']} of "
                     f"{n['unmasked']}, incorrect denied {o['incorrect_denied']} -> {n['incorrect_denied']} of "
                     f"{n['incorrect']}, masked wrongly denied {o['masked_denied']} -> {n['masked_denied']} of "
                     f"{n['masked']}, not properly masked but allowed {o['not_masked_allowed']} -> "
                     f"{n['not_masked_allowed']}, undecided {o.get('undecided', '-')} -> {n.get('undecided', '-')} "
                     f"of {n.get('visits', '-')}")
    lines.append(f"gate {'PASSED' if result['passed'] else 'REFUSED'} (tolerance {result['tolerance']}): "
                 f"{result['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """0: passed; 1: refused (the card says why either way)."""
    if not 0 <= args.tolerance < 1:
        raise ValueError(f"--tolerance {args.tolerance} is not between 0 and 1")
    if args.visits < 0:
        raise ValueError(f"--visits {args.visits}: must be 0 or more")
    if args.visit_tolerance < 0:
        raise ValueError(f"--visit-tolerance {args.visit_tolerance}: must be 0 or more")
    result = gate(args.new, args.baseline, list(args.scenes), list(args.door_labels), args.tolerance, args.visits,
                  args.visit_tolerance)
    print(format_result(result))
    print(f"verdict written to {card_path_for(args.new)}")
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask-train gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
