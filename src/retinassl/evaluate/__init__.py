"""Evaluation: metrics, statistics, linear probe, fine-tuning, sweeps, segmentation."""
