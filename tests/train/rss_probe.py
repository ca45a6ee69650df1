"""Subprocess probe for test_memory: one training step on a cohort; prints peak RSS as JSON.

Usage: python -m tests.train.rss_probe LABELS_CSV STORES_DIR OUT_DIR WORKERS
"""

from __future__ import annotations

import gc
import json
import resource
import sys

import torch


def main() -> None:
    labels, stores, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    from tests.train.synthstores import tiny_overrides
    from wsipipe.train.config import load_train_config
    from wsipipe.train.loop import Trainer

    cfg = load_train_config(
        None,
        tiny_overrides(
            labels=labels,
            stores=stores,
            out=out,
            epochs=1,
            batch_size=2,
            workers=workers,
            I=256,
            drop_ratio=0.0,
            calibrate_tiles=64,
        ),
    )
    trainer = Trainer(cfg)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recs = trainer.fit()
    del trainer
    gc.collect()
    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "base_mb": base,
                "main_mb": main_peak,
                "workers_mb": workers_peak,
                "tiles": recs[-1]["tiles_per_s"] * recs[-1]["train_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
