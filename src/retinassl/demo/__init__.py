"""The demo: the toolkit end to end on synthetic data."""
