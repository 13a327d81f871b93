"""Data layer: manifests, dataset sources, synthetic data, preprocessing, cache, patches, splits."""
