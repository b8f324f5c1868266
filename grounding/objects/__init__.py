"""Object maps and single-object discovery: Object-DINO, the published cuts (LOST, TokenCut, DINO-seg), regions.

regions.py <- cuts.py <- object_dino.py <- discovery.py (the registry of discovery methods by name) <- instances.py
(several objects per image: batched iterative cuts; it registers its first-object methods into discovery's registry)
<- compact.py (the most compact region of the map, with a pixel box, and the default single-object method: that
region, or the Object-DINO cut segment it is a small part of).
mask_source.py: which regions a grounding method treats as its objects (object-dino, random, oracle).
"""

from .cuts import DiscoveryOutput, PatchBox
from .discovery import DEFAULT_METHOD, DISCOVERY_METHODS, discover, register_discovery
from .instances import DEFAULT_INSTANCE_METHOD, INSTANCE_METHODS, InstanceOutput, instances  # registers its methods
from . import compact  # noqa: F401  (registers object-dino-compact and object-dino-whole)
from .mask_source import MASK_SOURCES, MaskSource, OracleMasks
from .object_dino import ObjectDINO, ObjectDINOConfig, ObjectDINOOutput
from .regions import Region, object_regions, upsample_maps

__all__ = ["ObjectDINO", "ObjectDINOConfig", "ObjectDINOOutput", "DEFAULT_METHOD", "DISCOVERY_METHODS",
           "DiscoveryOutput", "PatchBox", "discover", "register_discovery", "Region", "object_regions",
           "upsample_maps", "DEFAULT_INSTANCE_METHOD", "INSTANCE_METHODS", "InstanceOutput", "instances",
           "MASK_SOURCES", "MaskSource", "OracleMasks"]
