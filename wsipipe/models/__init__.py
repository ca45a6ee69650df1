"""IPS and DBPS as pure PyTorch: patch encoders, the cross-attention aggregator, streaming
patch selection (IPS / DBPS scans), the gradient pass, random patch drop and streaming
attention over all tiles for heatmaps. Tensors in, tensors out: no files, no slides."""

from wsipipe.models.aggregator import (
    AggregatorConfig,
    CrossAttentionAggregator,
    TaskSpec,
    activate,
    scores_from_logits,
)
from wsipipe.models.batch import (
    ScanBatch,
    collate_scan_results,
    gradient_pass,
    pad_batch,
    random_patch_drop,
)
from wsipipe.models.encoders import FeatureEncoder, PatchEncoder, create_encoder
from wsipipe.models.selection import Chunk, ChunkHook, ScanResult, dbps_scan, ips_scan
from wsipipe.models.streaming import AttentionMap, AttentionStream, stream_attention

__all__ = [
    "AggregatorConfig",
    "AttentionMap",
    "AttentionStream",
    "Chunk",
    "ChunkHook",
    "CrossAttentionAggregator",
    "FeatureEncoder",
    "PatchEncoder",
    "ScanBatch",
    "ScanResult",
    "TaskSpec",
    "activate",
    "collate_scan_results",
    "create_encoder",
    "dbps_scan",
    "gradient_pass",
    "ips_scan",
    "pad_batch",
    "random_patch_drop",
    "scores_from_logits",
    "stream_attention",
]
