"""Synthetic CAMELYON-like slides and cohorts for tests, benchmarks and the quick start.

>>> from wsipipe.synth import CohortConfig, generate_cohort
>>> cohort = generate_cohort("synthetic", CohortConfig(n_slides=12))  # doctest: +SKIP

See :mod:`wsipipe.synth.cohort` (cohort layout), :mod:`wsipipe.synth.svs` (Aperio SVS writer)
and :mod:`wsipipe.synth.tissue_render` (procedural H&E rendering).
"""

from __future__ import annotations

from wsipipe.synth.cohort import (
    Cohort,
    CohortConfig,
    generate_cohort,
    generate_slide,
    stratified_splits,
)
from wsipipe.synth.layout import SlideLayout, make_layout
from wsipipe.synth.svs import write_svs
from wsipipe.synth.tissue_render import TissueRenderer

__all__ = [
    "Cohort",
    "CohortConfig",
    "SlideLayout",
    "TissueRenderer",
    "generate_cohort",
    "generate_slide",
    "make_layout",
    "stratified_splits",
    "write_svs",
]
