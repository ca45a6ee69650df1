"""Geometry in level-0 slide pixels: tissue masks <-> polygons, GeoJSON (QuPath) and ASAP XML
(CAMELYON16) annotations. Used by tile (tissue), heatmap (evaluation) and synth (writing)."""

from wsipipe.geometry.annotations import (
    EXCLUSION_NAMES,
    read_annotations,
    read_asap_xml,
    read_geojson_annotations,
    write_asap_xml,
)
from wsipipe.geometry.geojson import (
    read_geojson,
    read_tissue_geojson,
    tissue_geojson,
    write_geojson,
    write_geojson_annotations,
)
from wsipipe.geometry.polygons import mask_to_polygons, polygon_parts, polygons_to_mask

__all__ = [
    "EXCLUSION_NAMES",
    "mask_to_polygons",
    "polygon_parts",
    "polygons_to_mask",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
    "read_geojson_annotations",
    "read_tissue_geojson",
    "tissue_geojson",
    "write_asap_xml",
    "write_geojson",
    "write_geojson_annotations",
]
