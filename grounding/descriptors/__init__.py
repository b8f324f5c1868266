"""Dense descriptors (overlapping patches, log-binned facets) and their applications: PCA, co-segmentation,
part co-segmentation and correspondences."""

from .dense import FACETS, DenseDescription, DenseExtractor, facet_descriptors, log_bin, saliency_map

__all__ = ["DenseExtractor", "DenseDescription", "FACETS", "facet_descriptors", "saliency_map", "log_bin"]
