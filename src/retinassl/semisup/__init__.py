"""Semi-supervised learning: the patch-based GAN and image-level aggregation of patch predictions."""
