"""Explanations: patch heatmaps, Grad-CAM, embeddings."""
