"""The per-stage steps the epoch loop runs, by name: co-finetuning (stage 1) and distillation (stage 3).

A step is a model, its optimizer groups and its loss (``core.loop.Step``), built from a typed spec (``<Step>.spec_class``,
a dataclass that crosses the Ray boundary as a dict). ``STEPS`` is the registry the Train workers look a step up in; a
new kind of step is a module here and one entry below.
"""
from mtbert_ray.core.steps import cofinetune, distill
from mtbert_ray.core.steps.cofinetune import CofinetuneSpec, CofinetuneStep
from mtbert_ray.core.steps.distill import DistillSpec, DistillStep

STEPS = {cofinetune.NAME: CofinetuneStep, distill.NAME: DistillStep}


def build_step(name: str, spec: dict):
    """The step ``name`` (``STEPS``) of a spec given as its dict (``<Spec>.to_dict()``)."""
    step = STEPS[name]
    return step(step.spec_class.from_dict(spec))


__all__ = ["STEPS", "CofinetuneSpec", "CofinetuneStep", "DistillSpec", "DistillStep", "build_step"]
