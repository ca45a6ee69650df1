"""Options shared by the GPU commands (train, predict, embed, heatmap), declared once.

Each is ``None`` by default so that the YAML config / preset and then the stage config's
dataclass default apply; the help text says what that default is.
"""

from __future__ import annotations

from typing import Annotated

import typer

DeviceOpt = Annotated[
    str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default: auto = cuda if present).")
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(help="auto | bf16 | fp16 | fp32 (default: auto = bf16 on CUDA, fp32 on CPU)."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="Tile-decoding loader processes, 0 = decode in the main process "
        "(default: the config's; train/embed 4, heatmap 2, predict the run's)."
    ),
]
