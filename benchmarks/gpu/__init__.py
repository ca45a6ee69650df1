"""The GPU benchmark of issue 15, one command on one CUDA device (<= 6 minutes on an
H100 / H200 with 16 CPU cores)::

    python -m benchmarks.gpu --out DIR [--write]   # the device run
    python -m benchmarks.gpu --smoke --out DIR     # every part at tiny sizes on the CPU

It builds its data on local disk (zarr stores of real H&E JPEG tiles repeated to N, a
features cache) and measures, through wsipipe's own code paths (``setup_run`` /
``train_epoch`` / ``optimizer_step`` of the training loop, ``open_pipeline`` /
``scan_slide`` of the inference API, the encoders of ``wsipipe.encoders``):

1. ``e2e``: end-to-end IPS and DBPS training steps with the ``camelyon16-e2e`` preset
   (ResNet-50, bf16 autocast, channels_last, batch 16) with one slide of N = 10k, 250k,
   50k tiles in the batch, with / without gradient checkpointing: step time, peak GPU
   memory (``max_memory_allocated`` / ``max_memory_reserved``).
2. ``scan``: streamed scan tiles/s (CPU JPEG decode in the DataLoader workers) against the
   bare encoder forward on GPU-resident tiles (goal >= 0.9), ResNet-50 and ViT-B/16; and
   the scan fed by GPU JPEG decoding (``torchvision.io.decode_jpeg`` on CUDA).
3. ``features``: features mode at the papers' CAMELYON16 settings (IPS M = I = 5000; DBPS
   M = 100, I = 500, S = 400; B = 16): step time and peak GPU memory.
4. ``tests``: ``pytest -m gpu``, counts.

Every part runs time-boxed in its own process; a failure is a row of the table and the run
goes on. ``DIR/rows.jsonl`` and ``DIR/table.md`` grow row by row (a run cut off keeps what
it measured); ``DIR/section.md`` is the RESULTS.md section (device, driver, torch, command);
``--write`` merges it into ``benchmarks/RESULTS.md`` under ``## GPU`` and copies that file
to ``DIR/RESULTS.md``; ``DIR/logs/`` holds each part's output.
"""

ORDER = ["e2e", "scan", "features", "tests"]
