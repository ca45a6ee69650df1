"""Slide labels: reading the labels CSV a run trains on (:mod:`~wsipipe.labels.table`),
seeded stratified splits and folds (:mod:`~wsipipe.labels.splits`), and writing labels CSVs
for public cohorts (:mod:`~wsipipe.labels.cohorts`, ``wsipipe labels``)."""

from wsipipe.labels.splits import stratified_folds, stratified_split
from wsipipe.labels.table import (
    LabelTable,
    SlideRecord,
    check_cohort,
    read_labels_csv,
    training_splits,
)

__all__ = [
    "LabelTable",
    "SlideRecord",
    "check_cohort",
    "read_labels_csv",
    "stratified_folds",
    "stratified_split",
    "training_splits",
]
