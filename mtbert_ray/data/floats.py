"""Float columns as stored in Parquet: float32, or the uint16 bit patterns of float16 / bfloat16.

Arrow and Parquet have no bfloat16, and a uniform 16-bit encoding keeps one read path: the teacher
cache stores hidden states in ``cache.dtype`` and reads them back as float32.
"""
from __future__ import annotations

import numpy as np
import torch

STORED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def encode_floats(values: torch.Tensor, dtype: str) -> np.ndarray:
    """A float tensor as stored: float32, or the uint16 bit patterns of float16 / bfloat16."""
    if dtype == "float32":
        return values.float().cpu().numpy()
    if dtype == "float16":
        return values.to(torch.float16).cpu().numpy().view(np.uint16)
    if dtype == "bfloat16":
        return values.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    raise ValueError(f"cache dtype must be float32, float16 or bfloat16, got {dtype!r}")


def stored_tensor(values: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored values as a tensor of their stored precision — float16 / bfloat16 bits reinterpreted, no widening — so a
    batch crosses to the GPU in half the bytes and is widened there (``.float()`` on the device)."""
    if dtype == "float32" or values.dtype == np.float32:
        return torch.from_numpy(values.astype(np.float32, copy=False))
    bits = values.astype(np.uint16, copy=False)
    if dtype == "float16":
        return torch.from_numpy(bits.view(np.float16))
    if dtype == "bfloat16":
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    raise ValueError(f"cache dtype must be float32, float16 or bfloat16, got {dtype!r}")


def decode_floats(values: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values back to float32 (inverse of ``encode_floats``)."""
    if dtype == "float32" or values.dtype == np.float32:
        return values.astype(np.float32, copy=False)
    bits = values.astype(np.uint16, copy=False)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"cache dtype must be float32, float16 or bfloat16, got {dtype!r}")
