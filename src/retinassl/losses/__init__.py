"""Losses by kind, as plain functions of tensors."""
