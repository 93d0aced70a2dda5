"""Leaves every layer may import: user-facing errors, metric and split names, hashing, progress lines."""
