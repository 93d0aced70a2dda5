"""The runtimes an exported student runs on, by name: one place that ``predict``, Ray Serve and the speed checks look
them up in. A runtime is a loader ``(folder, threads) -> model`` whose model has ``predict`` / ``predict_proba`` and
``label_names`` / ``meta`` (``StudentClassifier`` and ``OnnxStudent`` both do).

A new deployment target is one function registered here with ``@runtime("name")`` (its files written by
``deploy.export``, if it needs any); every command that takes ``--runtime`` offers it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.deploy.classifier import StudentClassifier
from mtbert_ray.deploy.onnx import ONNX_FILE, OnnxStudent

Loader = Callable[[Path, "int | None"], Any]
RUNTIMES: dict[str, Loader] = {}


def runtime(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name`` (``--runtime NAME``)."""
    def register(loader: Loader) -> Loader:
        if name in RUNTIMES:
            raise ValueError(f"runtime {name!r} is registered twice")
        RUNTIMES[name] = loader
        return loader

    return register


@runtime("torch")
def _torch(folder: Path, threads: int | None = None) -> StudentClassifier:
    """PyTorch (fp32) on the CPU: the exported transformers model itself."""
    if threads:
        torch.set_num_threads(threads)
    return StudentClassifier.from_pretrained(folder)


@runtime("onnx")
def _onnx(folder: Path, threads: int | None = None) -> OnnxStudent:
    """onnxruntime, fp32 (``model.onnx`` of ``mtbert-ray export onnx``)."""
    return OnnxStudent(folder, threads=threads)


@runtime("onnx-int8")
def _onnx_int8(folder: Path, threads: int | None = None) -> OnnxStudent:
    """onnxruntime, dynamically quantised int8 (``model.int8.onnx`` of ``mtbert-ray export onnx --int8``)."""
    return OnnxStudent(folder, int8=True, threads=threads)


def load_runtime(name: str, folder: str | Path, threads: int | None = None):
    """The student in ``folder`` on runtime ``name``; ``threads`` fixes its intra-op threads (None: the runtime's own)."""
    if name not in RUNTIMES:
        raise ConfigError(f"runtime: {name!r} is not one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name](Path(folder), threads)


def default_runtime(folder: str | Path) -> str:
    """onnx when the folder holds ``model.onnx``, else torch."""
    return "onnx" if (Path(folder) / ONNX_FILE).is_file() else "torch"
