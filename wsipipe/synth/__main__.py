"""``python -m wsipipe.synth OUT``: generate a synthetic cohort and print where it went."""

from __future__ import annotations

import argparse
import sys
import time

from wsipipe.errors import WsipipeError
from wsipipe.synth.cohort import CohortConfig, generate_cohort


def main(argv: list[str] | None = None) -> int:
    defaults = CohortConfig()
    ap = argparse.ArgumentParser(
        prog="python -m wsipipe.synth", description="Generate a synthetic CAMELYON-like cohort."
    )
    ap.add_argument("out", help="output folder (slides/, annotations/, labels.csv)")
    ap.add_argument("--n-slides", type=int, default=defaults.n_slides)
    ap.add_argument("--width", type=int, default=defaults.width, help="level-0 px")
    ap.add_argument("--height", type=int, default=defaults.height, help="level-0 px")
    ap.add_argument("--mpp", type=float, default=defaults.mpp, help="um per level-0 px")
    ap.add_argument("--positive-fraction", type=float, default=defaults.positive_fraction)
    ap.add_argument("--pen-fraction", type=float, default=defaults.pen_fraction)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    cfg_kwargs = dict(
        n_slides=args.n_slides,
        width=args.width,
        height=args.height,
        mpp=args.mpp,
        positive_fraction=args.positive_fraction,
        pen_fraction=args.pen_fraction,
        seed=args.seed,
    )
    start = time.perf_counter()
    try:
        cohort = generate_cohort(args.out, CohortConfig(**cfg_kwargs), workers=args.workers)
    except WsipipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    print(
        f"{len(cohort.slides)} slides in {cohort.root} ({took:.1f} s); labels: {cohort.labels_csv}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
