"""mtbert-ray: multi-teacher knowledge distillation (MT-BERT, Wu, Wu & Huang 2021) on Ray.

``StudentClassifier`` (an exported student), ``run_experiment`` / ``Experiment`` (one experiment, all its
stages or one at a time), ``ExperimentResult`` (its typed result) and ``load_config`` are importable from
here; they load lazily so that ``import mtbert_ray`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Experiment", "ExperimentResult", "StudentClassifier", "load_config", "run_experiment"]

_WHERE = {
    "StudentClassifier": "mtbert_ray.export",
    "run_experiment": "mtbert_ray.pipeline",
    "Experiment": "mtbert_ray.pipeline",
    "ExperimentResult": "mtbert_ray.results",
    "load_config": "mtbert_ray.config",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mtbert_ray' has no attribute {name!r}")
