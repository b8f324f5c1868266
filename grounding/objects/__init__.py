"""Object maps and single-object discovery: Object-DINO, the published cuts (LOST, TokenCut, DINO-seg), regions."""

from .discovery import DEFAULT_METHOD, DISCOVERY_METHODS, DiscoveryOutput, discover
from .object_dino import ObjectDINO, ObjectDINOConfig, ObjectDINOOutput
from .regions import Region, object_regions, upsample_maps

__all__ = ["ObjectDINO", "ObjectDINOConfig", "ObjectDINOOutput", "DEFAULT_METHOD", "DISCOVERY_METHODS",
           "DiscoveryOutput", "discover", "Region", "object_regions", "upsample_maps"]
