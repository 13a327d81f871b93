"""Training on Lightning: the one engine every method runs through."""
