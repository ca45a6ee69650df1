"""IPS and DBPS as pure PyTorch: patch encoders, the cross-attention aggregator, streaming
patch selection (IPS / DBPS scans), the gradient pass, random patch drop and streaming
attention over all tiles for heatmaps. Tensors in, tensors out: no files, no slides."""

from wsipipe.models.aggregator import (
    AggregatorConfig,
    CrossAttentionAggregator,
    TaskSpec,
    scores_from_logits,
)
from wsipipe.models.batch import gradient_pass, pad_batch, random_patch_drop
from wsipipe.models.encoders import FeatureEncoder, PatchEncoder
from wsipipe.models.selection import ChunkHook, ScanResult, dbps_scan, ips_scan
from wsipipe.models.streaming import AttentionMap, AttentionStream

__all__ = [
    "AggregatorConfig",
    "AttentionMap",
    "AttentionStream",
    "ChunkHook",
    "CrossAttentionAggregator",
    "FeatureEncoder",
    "PatchEncoder",
    "ScanResult",
    "TaskSpec",
    "dbps_scan",
    "gradient_pass",
    "ips_scan",
    "pad_batch",
    "random_patch_drop",
    "scores_from_logits",
]
