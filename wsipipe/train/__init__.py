"""``wsipipe train``: end-to-end IPS/DBPS training streamed from patch stores.

Light at import time (no torch): the submodules import torch themselves.
"""

from __future__ import annotations

from wsipipe.train.config import TrainConfig, load_train_config, preset_names
from wsipipe.train.schedule import lr_factor

__all__ = ["TrainConfig", "load_train_config", "lr_factor", "preset_names"]
