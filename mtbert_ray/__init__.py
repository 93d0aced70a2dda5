"""mtbert-ray: multi-teacher knowledge distillation (MT-BERT, Wu, Wu & Huang 2021) on Ray.

``StudentClassifier`` (an exported student) and ``run_experiment`` are importable from here;
they load lazily so that ``import mtbert_ray`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["StudentClassifier", "run_experiment", "load_config"]


def __getattr__(name: str):
    if name == "StudentClassifier":
        from mtbert_ray.export import StudentClassifier

        return StudentClassifier
    if name == "run_experiment":
        from mtbert_ray.pipeline import run_experiment

        return run_experiment
    if name == "load_config":
        from mtbert_ray.config import load_config

        return load_config
    raise AttributeError(f"module 'mtbert_ray' has no attribute {name!r}")
