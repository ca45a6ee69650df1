"""The labels CSV (``slide_id,label[,split][,fold]``): parse, validate, split.

Every problem of the CSV is collected and reported in ONE ConfigError before training starts
(unknown / unsafe slide ids, duplicates, missing or unknown labels, slides without stores, a
split with a single class), each naming its CSV line so the user can fix them all at once.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsipipe.errors import ConfigError, WsipipeError, warn
from wsipipe.fileio import check_slide_id

MAX_LISTED = 12  # problems listed in one message before "... and N more"


@dataclass(frozen=True)
class SlideRecord:
    """One CSV row. ``label`` is the class index (-1 when the row has no label)."""

    slide_id: str
    label: int
    label_name: str
    split: str
    fold: int | None
    line: int  # 1-based line number in the CSV (header is line 1)
    patient: str = ""  # `patient_id` column: slides of one patient share a split and fold


@dataclass(frozen=True)
class LabelTable:
    path: Path
    classes: tuple[str, ...]
    records: tuple[SlideRecord, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(
                f"{self.path}: found {len(self.classes)} class(es) {list(self.classes)}; "
                "training needs at least two labels"
            )

    def by_split(self, split: str) -> list[SlideRecord]:
        return [r for r in self.records if r.split == split]

    def by_id(self) -> dict[str, SlideRecord]:
        return {r.slide_id: r for r in self.records}


def _sort_classes(names: set[str]) -> tuple[str, ...]:
    """Sorted class names; numerically when every name is an integer ("2" before "10")."""
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


def _problems_message(path: Path, problems: Sequence[str], hint: str) -> str:
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{path}: {len(problems)} problem(s): {listed}{more}. {hint}"


def read_labels_csv(
    path: str | Path,
    label_column: str = "label",
    split_column: str = "split",
    fold_column: str = "fold",
    classes: Sequence[str] = (),
) -> LabelTable:
    """Parse and validate the labels CSV (no store checks; see :func:`check_cohort`).

    Rows may lack a label (e.g. an unlabeled test split); training checks that its own splits
    are labeled. A row's label must be one of ``classes`` when those are given.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{p}: labels CSV not found; check --labels") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the labels CSV ({exc}); save it as UTF-8") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in ("slide_id", label_column) if c not in header]
    if missing:
        raise ConfigError(
            f"{p}: missing column(s) {missing} (header: {header}); the CSV needs "
            f"slide_id,{label_column}[,{split_column}][,{fold_column}]"
        )
    problems: list[str] = []
    rows: list[tuple[str, str, str, int | None, int, str]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        sid = (row.get("slide_id") or "").strip()
        label = (row.get(label_column) or "").strip()
        split = (row.get(split_column) or "").strip() if split_column in header else ""
        patient = (row.get("patient_id") or "").strip() if "patient_id" in header else ""
        fold: int | None = None
        fold_text = (row.get(fold_column) or "").strip() if fold_column in header else ""
        if fold_text:
            try:
                fold = int(float(fold_text))
            except ValueError:
                problems.append(f"line {line} {sid!r}: {fold_column} {fold_text!r} is not a number")
        if not sid:
            problems.append(f"line {line}: empty slide_id")
            continue
        try:
            check_slide_id(sid)
        except ConfigError:
            problems.append(f"line {line}: slide_id {sid!r} is not a plain name (no '/', '..')")
            continue
        if sid in seen:
            problems.append(f"line {line}: slide_id {sid!r} repeats line {seen[sid]}")
            continue
        seen[sid] = line
        if classes and label and label not in classes:
            near = [c for c in classes if c.casefold() == label.casefold()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(
                f"line {line} {sid!r}: label {label!r} is not one of {list(classes)}{hint}"
            )
        rows.append((sid, label, split, fold, line, patient))
    if not rows and not problems:
        problems.append("no data rows")
    if problems:
        raise ConfigError(_problems_message(p, problems, "Fix these rows and re-run"))
    _check_label_case(p, [(r[1], r[4]) for r in rows if r[1]], classes, label_column)
    names = tuple(classes) if classes else _sort_classes({r[1] for r in rows if r[1]})
    index = {name: i for i, name in enumerate(names)}
    records = tuple(
        SlideRecord(sid, index.get(label, -1), label, split, fold, line, patient)
        for sid, label, split, fold, line, patient in rows
    )
    return LabelTable(p, names, records)


def _check_label_case(
    path: Path, labels: Sequence[tuple[str, int]], classes: Sequence[str], column: str
) -> None:
    """Labels that differ only in case ("Normal", "normal") would train as separate classes:
    a ConfigError naming them, unless ``classes`` lists them explicitly (then a warning).
    (Surrounding whitespace is stripped when the CSV is read, so it never splits a class.)"""
    lines: dict[str, list[int]] = {}
    for label, line in labels:
        lines.setdefault(label, []).append(line)
    groups: dict[str, list[str]] = {}
    for label in sorted(lines):
        groups.setdefault(label.casefold(), []).append(label)
    clashes = [g for g in groups.values() if len(g) > 1]
    if not clashes:
        return

    def where(label: str) -> str:
        ls = lines[label]
        more = f", ... {len(ls) - 3} more" if len(ls) > 3 else ""
        return f"{label!r} (line{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls[:3]))}{more})"

    named = "; ".join(" and ".join(where(label) for label in g) for g in clashes)
    if classes:
        warn(
            f"{path}: {column} values {named} differ only in case; they are separate classes "
            "because --classes lists each of them"
        )
        return
    every = _sort_classes(set(lines))
    raise ConfigError(
        f"{path}: {column} values {named} differ only in case and would train as "
        f"{len(every)} separate classes; make each class one spelling in the CSV, or, if they "
        f"really are different classes, list them all with --classes (e.g. --classes "
        f"{','.join(every)})"
    )


def training_splits(
    table: LabelTable,
    train_split: str = "train",
    val_split: str = "val",
    fold: int | None = None,
    split_column: str = "split",
    fold_column: str = "fold",
    allow_empty_val: bool = False,
) -> tuple[list[SlideRecord], list[SlideRecord]]:
    """(train, validation) records; every one labeled, every split with >= 2 classes.

    With ``fold`` set: validation = rows whose fold equals it, training = rows with another
    fold (rows without a fold, e.g. a held-out test set, take no part). Otherwise the split
    column decides; with ``allow_empty_val`` the validation split may be empty (the caller
    carves one from the training slides).
    """
    p = table.path
    if fold is not None:
        if all(r.fold is None for r in table.records):
            raise ConfigError(f"{p}: --fold {fold} given but no `{fold_column}` values in the CSV")
        train = [r for r in table.records if r.fold is not None and r.fold != fold]
        val = [r for r in table.records if r.fold == fold]
        names = (f"folds != {fold}", f"fold {fold}")
    else:
        if all(not r.split for r in table.records):
            raise ConfigError(
                f"{p}: no `{split_column}` column values; add a split column "
                f"({train_split}/{val_split}) or pass --fold with a `{fold_column}` column"
            )
        train = table.by_split(train_split)
        val = table.by_split(val_split)
        names = (f"split {train_split!r}", f"split {val_split!r}")
    problems: list[str] = []
    for recs, name in zip((train, val), names, strict=True):
        if not recs and recs is val and allow_empty_val:
            continue
        if not recs:
            hint = ""
            if recs is val and fold is None:
                hint = (f" (add rows with {split_column} = {val_split}, or pass --val-fraction "
                        "0.2 to carve them from the training slides)")  # fmt: skip
            problems.append(f"{name} has no slides{hint}")
            continue
        for r in recs:
            if r.label < 0:
                problems.append(f"line {r.line} {r.slide_id!r}: label missing ({name})")
        counts = Counter(table.classes[r.label] for r in recs if r.label >= 0)
        if len(counts) == 1:
            (only,) = counts
            rows = ", ".join(str(r.line) for r in recs[:MAX_LISTED])
            problems.append(f"{name} has a single class {only!r} (lines {rows})")
    if problems:
        raise ConfigError(
            _problems_message(
                p,
                problems,
                "Every training/validation slide needs a label and "
                "each split needs at least two classes",
            )
        )
    return train, val


def check_cohort(
    table: LabelTable,
    records: Sequence[SlideRecord],
    locate: Callable[[str], object],
) -> dict[str, object]:
    """Run ``locate(slide_id)`` (finds/opens the slide's store, raising WsipipeError) for
    every record; one ConfigError lists all slides that failed. Returns {slide_id: result}."""
    found: dict[str, object] = {}
    problems: list[str] = []
    for r in records:
        try:
            found[r.slide_id] = locate(r.slide_id)
        except WsipipeError as exc:
            problems.append(f"line {r.line} {r.slide_id!r}: {' '.join(str(exc).split())}")
    if problems:
        raise ConfigError(
            _problems_message(
                table.path,
                problems,
                "Run `wsipipe tile` for these slides or fix --stores / the labels CSV",
            )
        )
    return found
