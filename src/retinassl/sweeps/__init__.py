"""Grids of jobs (transfer, SSL-GAN table, vessel curve) and their worker processes."""
