"""mtbert-ray: multi-teacher knowledge distillation (MT-BERT, Wu, Wu & Huang 2021) on Ray.

``StudentClassifier`` (an exported student), ``run_experiment`` / ``Experiment`` (one experiment, all its
stages or one at a time), ``ExperimentResult`` (its typed result) and ``load_config`` are importable from
here; they load lazily. Importing the package registers the exported student's model type (``mtbert-student``)
with transformers' ``AutoConfig`` and ``AutoModelForSequenceClassification``, so ``pipeline("text-classification",
model=FOLDER)`` loads a student folder without remote code.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Experiment", "ExperimentResult", "StudentClassifier", "load_config", "run_experiment"]

_WHERE = {
    "StudentClassifier": "mtbert_ray.deploy.export",
    "run_experiment": "mtbert_ray.experiment.pipeline",
    "Experiment": "mtbert_ray.experiment.pipeline",
    "ExperimentResult": "mtbert_ray.experiment.results",
    "load_config": "mtbert_ray.config",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mtbert_ray' has no attribute {name!r}")


def _register_with_transformers() -> None:
    try:
        from mtbert_ray.models.hf_student import register
    except ImportError:  # pragma: no cover - torch / transformers missing: nothing to register with
        return
    register()


_register_with_transformers()
