"""The entry point of a Train stage in each worker (or in the calling process): spec → step → the epoch loop."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mtbert_ray.core.loop import LoopSpec, run_epochs
from mtbert_ray.core.session import StageSession
from mtbert_ray.core.steps import build_step
from mtbert_ray.distributed.sessions import RayTrainSession
from mtbert_ray.models.hub import quiet_transformers


def worker_config(step: str, spec, loop: LoopSpec) -> dict[str, Any]:
    """The ``train_loop_config`` of a stage: the step's name (``core.steps.STEPS``), its spec and the loop's settings."""
    return {"step": step, "spec": spec.to_dict(), "loop": asdict(loop)}


def stage_worker(config: dict[str, Any], session: StageSession | None = None) -> None:
    """``config = worker_config(...)``; ``session``: the calling process's (in-process stages), else Ray Train's."""
    quiet_transformers()
    loop = config["loop"]
    spec = LoopSpec(**{**loop, "submission": tuple(loop["submission"]) if loop.get("submission") else None})
    run_epochs(build_step(config["step"], config["spec"]), session if session is not None else RayTrainSession(), spec)
