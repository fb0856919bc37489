"""Radiology-style impressions for phantoms, and the random choice of findings per case.

Every finding has several phrasings, split into two disjoint sets: ``train`` templates for the training
dataset and ``eval`` templates for the adherence benchmark. Some finding pairs (:data:`HELD_OUT_PAIRS`)
never occur together in ``train`` cases; about half of the ``eval`` cases contain one of them. Templates
avoid quotes and parentheses, which :func:`GenerateCTLib.pipeline.build_prompt` strips.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from GenerateCTLib.phantom_anatomy import LOBES, body_scale
from GenerateCTLib.phantom_findings import SEVERITIES, STATIONS, SUPPORTED_FINDINGS, Finding, PhantomSpec

Split = Literal["train", "eval"]
SPLITS = ("train", "eval")
LOBE_NAMES = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
              "LUL": "left upper lobe", "LLL": "left lower lobe"}
HELD_OUT_PAIRS = (
    frozenset({"Cardiomegaly", "Lung nodule"}),
    frozenset({"Emphysema", "Pleural effusion"}),
    frozenset({"Consolidation", "Lymphadenopathy"}),
    frozenset({"Atelectasis", "Pericardial effusion"}),
)
FINDING_COUNT_PROBS = (0.25, 0.35, 0.25, 0.15)  # 0, 1, 2, 3 findings

# Phrasings: label -> split -> templates. Fields: {severity} {Severity} {side} {Side} {effusions} {space}
# {base} {lobe} {Lobe} {size} {count} {Count} {stations} {Stations}.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "Normal": {
        "train": ("No acute cardiopulmonary findings.", "No acute cardiopulmonary abnormality.",
                  "Normal chest CT.", "No significant abnormality in the chest."),
        "eval": ("No acute cardiopulmonary process.", "Unremarkable CT of the chest."),
    },
    "Cardiomegaly": {
        "train": ("Cardiomegaly.", "Enlarged cardiac silhouette.", "The heart is enlarged.",
                  "{Severity} cardiomegaly.", "Cardiac enlargement is noted."),
        "eval": ("Increased heart size.", "The cardiac silhouette is enlarged, consistent with cardiomegaly.",
                 "{Severity} enlargement of the heart."),
    },
    "Pericardial effusion": {
        "train": ("Pericardial effusion.", "{Severity} pericardial effusion.",
                  "There is a {severity} pericardial effusion.", "Fluid in the pericardial sac."),
        "eval": ("A pericardial effusion is present.", "{Severity} amount of pericardial fluid."),
    },
    "Pleural effusion": {
        "train": ("{Severity} {side} pleural {effusions}.", "{Side} pleural {effusions}.",
                  "{Side} pleural {effusions} with dependent layering.",
                  "There is a {severity} {side} pleural effusion.", "Pleural fluid in the {space}."),
        "eval": ("{Side} pleural fluid, {severity} in volume.", "A {severity} amount of fluid in the {space}.",
                 "Dependent {side} pleural {effusions}."),
    },
    "Lung nodule": {
        "train": ("A {size} mm nodule in the {lobe}.", "{size} mm pulmonary nodule in the {lobe}.",
                  "Solitary {size} mm nodule in the {lobe}.", "There is a {size} mm nodule in the {lobe}."),
        "eval": ("Noncalcified {size} mm nodule in the {lobe}.", "{Lobe} nodule measuring {size} mm."),
    },
    "Lung nodules": {
        "train": ("{Count} pulmonary nodules, the largest {size} mm in the {lobe}.",
                  "Multiple lung nodules, the largest measuring {size} mm in the {lobe}."),
        "eval": ("{Count} nodules in the lungs, up to {size} mm.",
                 "Several pulmonary nodules measuring up to {size} mm, the largest in the {lobe}."),
    },
    "Consolidation": {
        "train": ("Consolidation in the {lobe}.", "{Lobe} consolidation.",
                  "Airspace consolidation in the {lobe}, compatible with pneumonia.",
                  "{Lobe} consolidation with air bronchograms."),
        "eval": ("Dense consolidation involving the {lobe}.", "Pneumonic consolidation of the {lobe}."),
    },
    "Emphysema": {
        "train": ("Emphysema.", "Centrilobular emphysema, upper lobe predominant.", "{Severity} emphysema.",
                  "Emphysematous changes in both upper lobes."),
        "eval": ("{Severity} centrilobular emphysematous changes.", "Upper lobe predominant emphysema."),
    },
    "Atelectasis": {
        "train": ("{Side} basal atelectasis.", "Subsegmental atelectasis at the {base}.",
                  "Linear atelectasis at the {base}."),
        "eval": ("Plate-like atelectasis at the {base}.", "Discoid atelectasis in the {base}."),
    },
    "Lymphadenopathy": {
        "train": ("Mediastinal lymphadenopathy.",
                  "Enlarged mediastinal lymph nodes, the largest {size} mm in short axis.",
                  "{Stations} lymphadenopathy.", "Multiple enlarged mediastinal lymph nodes."),
        "eval": ("Pathologically enlarged mediastinal nodes up to {size} mm.", "Mediastinal adenopathy."),
    },
}
COUNT_WORDS = {2: "two", 3: "three"}
CONSOLIDATION_LOBES = ("RUL", "RLL", "LUL", "LLL")  # the RML is too small for an enclosed lobar region


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def phrasing_counts() -> dict[str, dict[str, int]]:
    """Number of templates per finding and split."""
    return {label: {split: len(t[split]) for split in SPLITS} for label, t in TEMPLATES.items()}


def _fields(finding: Finding) -> dict[str, str]:
    side = finding.side or "bilateral"
    lobe = LOBE_NAMES.get(finding.lobe or "", "")
    stations = [s for s in STATIONS if s in finding.stations]
    stations_text = " and ".join(stations)
    fields = {
        "severity": finding.severity or "",
        "side": side,
        "effusions": "effusions" if side == "bilateral" else "effusion",
        "space": {"left": "left pleural space", "right": "right pleural space"}.get(side, "both pleural spaces"),
        "base": {"left": "left lung base", "right": "right lung base"}.get(side, "lung bases"),
        "lobe": lobe,
        "size": f"{round(finding.size_mm)}" if finding.size_mm else "",
        "count": COUNT_WORDS.get(finding.count or 1, "one"),
        "stations": stations_text,
    }
    for key in ("severity", "side", "lobe", "count", "stations"):
        fields[key.capitalize()] = fields[key][:1].upper() + fields[key][1:]
    return fields


def finding_sentence(finding: Finding, rng: np.random.Generator, split: Split = "train") -> str:
    """One impression sentence for ``finding`` from the ``split`` templates."""
    _check_split(split)
    key = "Lung nodules" if finding.label == "Lung nodule" and (finding.count or 1) > 1 else finding.label
    templates = TEMPLATES[key][split]
    if key == "Atelectasis" and finding.side == "bilateral":
        templates = tuple(t.replace("{Side} basal", "Bibasilar") for t in templates)
    if key == "Pleural effusion" and finding.side == "bilateral":
        templates = tuple(t.replace("There is a {severity} {side} pleural effusion.",
                                    "There are {severity} bilateral pleural effusions.") for t in templates)
    template = templates[int(rng.integers(len(templates)))]
    return template.format(**_fields(finding))


def impression(spec: PhantomSpec, rng: np.random.Generator, split: Split = "train") -> str:
    """The impression of ``spec``: one sentence per finding in random order, or a normal statement."""
    _check_split(split)
    if not spec.findings:
        templates = TEMPLATES["Normal"][split]
        return templates[int(rng.integers(len(templates)))]
    order = rng.permutation(len(spec.findings))
    return " ".join(finding_sentence(spec.findings[i], rng, split) for i in order)


def random_finding(label: str, rng: np.random.Generator, size_scale: float = 1.0) -> Finding:
    """A finding of ``label`` with random attributes; sizes in mm are multiplied by ``size_scale`` (children)."""
    if label not in SUPPORTED_FINDINGS:
        raise ValueError(f"label must be one of {list(SUPPORTED_FINDINGS)}, got {label!r}")
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    severity = pick(SEVERITIES[label]) if label in SEVERITIES else None
    if label == "Pleural effusion":
        return Finding(label, side=pick(("left", "right", "bilateral")), severity=severity)
    if label == "Atelectasis":
        return Finding(label, side=pick(("left", "right", "bilateral")))
    if label == "Lung nodule":
        count = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
        return Finding(label, lobe=pick(LOBES), size_mm=float(round(rng.integers(22, 31) * size_scale)), count=count)
    if label == "Consolidation":
        return Finding(label, lobe=pick(CONSOLIDATION_LOBES))
    if label == "Lymphadenopathy":
        n = int(rng.integers(1, len(STATIONS) + 1))
        stations = tuple(sorted(rng.choice(len(STATIONS), n, replace=False)))
        size = float(round(rng.integers(22, 31) * size_scale))
        return Finding(label, size_mm=size, stations=tuple(STATIONS[i] for i in stations))
    return Finding(label, severity=severity)


def _allowed(labels: set[str], split: Split) -> bool:
    has_held_out = any(pair <= labels for pair in HELD_OUT_PAIRS)
    return not has_held_out if split == "train" else True


def sample_spec(rng: np.random.Generator, split: Split = "train") -> PhantomSpec:
    """A random case: age, sex and 0–3 findings, respecting the split's held-out combinations."""
    _check_split(split)
    age = int(rng.integers(6, 18)) if rng.random() < 0.08 else int(rng.integers(20, 91))
    sex = ("male", "female")[int(rng.integers(2))]
    if split == "eval" and rng.random() < 0.5:  # a combination never seen in training
        pair = sorted(HELD_OUT_PAIRS[int(rng.integers(len(HELD_OUT_PAIRS)))])
        labels = set(pair)
        if rng.random() < 0.3:
            labels.add(SUPPORTED_FINDINGS[int(rng.integers(len(SUPPORTED_FINDINGS)))])
    else:
        while True:
            n = int(rng.choice(len(FINDING_COUNT_PROBS), p=FINDING_COUNT_PROBS))
            labels = set(rng.choice(SUPPORTED_FINDINGS, n, replace=False).tolist())
            if _allowed(labels, split):
                break
    ordered = [label for label in SUPPORTED_FINDINGS if label in labels]
    size_scale = float(np.clip(body_scale(age, "male"), 0.8, 1.0))
    findings = tuple(random_finding(label, rng, size_scale) for label in ordered)
    return PhantomSpec(age=age, sex=sex, findings=findings)
