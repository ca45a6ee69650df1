"""Synthetic CAMELYON-like slides and cohorts for tests, benchmarks and the quick start.

>>> from wsipipe.synth import CohortConfig, generate_cohort
>>> cohort = generate_cohort("synthetic", CohortConfig(n_slides=12))  # doctest: +SKIP

See :mod:`wsipipe.synth.cohort` (cohort layout), :mod:`wsipipe.synth.svs` (Aperio SVS writer)
and :mod:`wsipipe.synth.tissue_render` (procedural H&E rendering).
"""

from __future__ import annotations

from wsipipe.lazy import lazy_exports

# name -> module; imported on first use (the CLI imports this package at start-up)
_EXPORTS = {
    "Cohort": "wsipipe.synth.cohort",
    "CohortConfig": "wsipipe.synth.config",
    "SlideLayout": "wsipipe.synth.layout",
    "TissueRenderer": "wsipipe.synth.tissue_render",
    "generate_cohort": "wsipipe.synth.cohort",
    "generate_slide": "wsipipe.synth.cohort",
    "make_layout": "wsipipe.synth.layout",
    "stratified_splits": "wsipipe.synth.cohort",
    "write_svs": "wsipipe.synth.svs",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
