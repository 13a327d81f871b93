"""Figures: arrays in, PNG files out (matplotlib, written atomically)."""
