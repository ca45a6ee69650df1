"""Seeded, stratified splits and folds of slides or patients (pure Python).

Keys are slides or patients (all slides of a patient share its split and fold); strata are
their labels.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from wsipipe.errors import ConfigError


def stratified_split(
    strata: Mapping[str, str],
    fractions: Sequence[tuple[str, float]],
    seed: int = 0,
    rest: str = "train",
) -> dict[str, str]:
    """Assign every key (a slide or a patient) to a split, stratified by its label.

    ``strata`` maps key -> label; ``fractions`` gives (split name, fraction) in the order they
    are carved from each label's shuffled keys; what remains goes to ``rest``. A split with a
    fraction > 0 gets at least one key of each label when the label has enough keys, and
    ``rest`` always keeps at least one. Deterministic for a given seed.
    """
    for name, frac in fractions:
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"{name} fraction {frac!r} must be in [0, 1), e.g. 0.2")
    if sum(f for _, f in fractions) >= 1.0:
        raise ConfigError(
            f"split fractions {dict(fractions)} sum to >= 1; leave room for the {rest} split"
        )
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for key in sorted(strata):
        by_label[strata[key]].append(key)
    wanted = [(n, f) for n, f in fractions if f > 0]
    out: dict[str, str] = {}
    for label in sorted(by_label):
        keys = by_label[label]
        rng.shuffle(keys)
        start = 0
        for name, frac in wanted:
            count = int(len(keys) * frac + 0.5)
            if count == 0 and len(keys) >= len(wanted) + 1:
                count = 1
            count = max(0, min(count, len(keys) - start - 1))
            for key in keys[start : start + count]:
                out[key] = name
            start += count
        for key in keys[start:]:
            out[key] = rest
    return out


def stratified_folds(strata: Mapping[str, str], k: int, seed: int = 0) -> dict[str, int]:
    """Assign keys to ``k`` folds (0..k-1), stratified by label, sizes within one of each other."""
    if k < 2:
        raise ConfigError(f"folds = {k} must be >= 2 (or 0 for no fold column)")
    rng = random.Random(seed + 7919)  # independent of the split draw
    by_label: dict[str, list[str]] = defaultdict(list)
    for key in sorted(strata):
        by_label[strata[key]].append(key)
    out: dict[str, int] = {}
    offset = 0
    for label in sorted(by_label):
        keys = by_label[label]
        rng.shuffle(keys)
        for i, key in enumerate(keys):
            out[key] = (offset + i) % k
        offset = (offset + len(keys)) % k
    return out


def assign_splits(
    strata: Mapping[str, str],
    val_fraction: float,
    test_fraction: float,
    folds: int,
    seed: int,
) -> tuple[dict[str, str], dict[str, int]]:
    """(split per key, fold per non-test key). With folds, val = fold 0."""
    if folds:
        split = stratified_split(strata, [("test", test_fraction)], seed)
        fold = stratified_folds(
            {k: v for k, v in strata.items() if split[k] != "test"}, folds, seed
        )
        for key, f in fold.items():
            split[key] = "val" if f == 0 else "train"
        return split, fold
    fr = [("test", test_fraction), ("val", val_fraction)]
    return stratified_split(strata, fr, seed), {}


def carve_validation(
    slides: Sequence[tuple[str, str, str]], fraction: float, seed: int = 0
) -> set[str]:
    """The slide ids to validate on, carved from training slides ``(slide_id, label,
    patient)``: a seeded, label-stratified ``fraction``, whole patients at a time when
    patients are given (a patient's label for the strata is its most common slide label)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_fraction {fraction!r} must be in (0, 1), e.g. 0.2")
    groups: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, list[str]] = defaultdict(list)
    for sid, label, patient in slides:
        key = patient or sid
        groups[key].append(sid)
        labels[key].append(label)
    strata = {k: max(sorted(set(v)), key=v.count) for k, v in labels.items()}
    split = stratified_split(strata, [("val", fraction)], seed)
    return {sid for key, sids in groups.items() if split[key] == "val" for sid in sids}
