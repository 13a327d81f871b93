"""Metrics by kind, as plain functions of arrays (classification, segmentation, statistics, comparisons)."""
