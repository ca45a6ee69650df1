"""Subprocess probe for test_memory: one training step on a cohort; prints peak RSS as JSON.

Usage: python -m tests.train.rss_probe LABELS_CSV STORES_DIR OUT_DIR WORKERS
"""

from __future__ import annotations

import gc
import json
import resource
import sys

import torch


def reset_peak() -> None:
    """Reset this process's peak RSS (Linux: VmHWM) so the next reading covers only what
    follows; a no-op where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def vm_hwm_mb() -> float:
    """Peak RSS since the last reset (VmHWM) in MiB; the lifetime peak where unsupported."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    labels, stores, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    from tests.train.synthstores import tiny_overrides
    from wsipipe.train.config import load_train_config
    from wsipipe.train.loop import fit, setup_run

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
    run = setup_run(cfg)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset_peak()
    recs = fit(run)
    run.close()
    step_peak = vm_hwm_mb()
    del run
    gc.collect()
    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "base_mb": base,
                "main_mb": main_peak,
                "workers_mb": workers_peak,
                "step_mb": step_peak,
                "tiles": recs[-1]["tiles_per_s"] * recs[-1]["train_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
