"""Checks and estimates for clusters and GPUs: the Ray-free device check, the GPU smoke verdict, the node check, memory fit and input rate."""
