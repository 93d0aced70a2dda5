"""The typed result of one experiment, and its ``result.json``.

Every number is measured on data that did not choose it: the student's and the teachers'
checkpoints are selected on validation (``select.metric``), and their ``test`` scores are those
same checkpoints evaluated once on the test split (``None`` when the test split has no labels —
then ``predictions`` names the file written for the benchmark's server — or when there is none).

``result.json`` keeps the layout earlier versions wrote (``stages.cofinetune.teachers.<name>``,
``stages.distill.metrics``, ``params``, ``layer_maps``) and adds ``test`` beside each, the
selection metric, the selected epochs and the decisions taken (``decisions``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbert_ray.common.metric_names import Split, scores_from, teacher_head
from mtbert_ray.core.session import StageRun
from mtbert_ray.experiment.context import StageContext
from mtbert_ray.store.files import atomic_write_text
from mtbert_ray.store.stage import Published


@dataclass
class StageSummary:
    key: str
    checkpoint: str
    reused: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "checkpoint": self.checkpoint, "reused": self.reused, "seconds": round(self.seconds, 2)}


@dataclass
class ModelScores:
    """One model's scores: ``validation`` (of the selected epoch), ``test`` (the same checkpoint), size."""

    validation: dict[str, float]
    test: dict[str, float] | None
    params: int
    epoch: int | None = None  # the selected epoch

    def metric(self, name: str, split: Split | str = Split.VALIDATION) -> float | None:
        scores = self.validation if Split(split) is Split.VALIDATION else (self.test or {})
        return scores.get(name)


@dataclass
class FinishedRun:
    """What a finished experiment's stages made, from which its ``ExperimentResult`` is built (``from_run``)."""

    ctx: StageContext  # the context after stage 3
    teachers: Published  # stage 1
    cache: Published | None  # stage 2 (None: teachers on the fly)
    distilled: StageRun  # stage 3
    student_dir: Path  # the export
    params: dict[str, Any]  # parameter counts (``deploy.export.parameter_counts``)
    student_test: dict[str, Any] | None  # the selected checkpoint's test scores
    predictions: str | None  # the student's test predictions file
    test_note: str | None  # why a test score is missing, if it is
    decisions: dict[str, str]
    seconds: float  # the whole run
    distill_seconds: float


@dataclass
class ExperimentResult:
    name: str
    run_dir: Path
    student_dir: Path
    seconds: float
    data: dict[str, Any]
    select: dict[str, str]  # {"metric": "accuracy", "mode": "max"} as resolved for this task
    cofinetune: StageSummary
    teacher_cache: StageSummary | None
    distill: StageSummary
    teachers: dict[str, ModelScores]
    student: ModelScores
    shared_head_params: int
    layer_maps: list[list[int]]
    decisions: dict[str, str] = field(default_factory=dict)
    test_note: str | None = None  # why a test score is missing, if it is
    predictions: str | None = None  # file of the student's test predictions (index \t prediction)

    def best_teacher(self) -> str | None:
        """The co-finetuned teacher best on validation by the run's selection metric (None without teachers or
        without that metric): the teacher a student's retention is measured against. Ties: the first in the run's order."""
        metric, sign = self.select.get("metric", "accuracy"), -1 if self.select.get("mode") == "min" else 1
        scored = [(sign * s.metric(metric), name) for name, s in self.teachers.items() if s.metric(metric) is not None]
        return max(scored, key=lambda pair: pair[0])[1] if scored else None  # max keeps the first of equal scores

    def retention(self, metric: str = "accuracy") -> float | None:
        """The student's test ``metric`` ÷ its best teacher's (same split, same co-finetuned teacher the run used):
        how much of that teacher the student keeps (MT-BERT6: 94.6 / 95.1 = 99.5 % on SST-2)."""
        best = self.best_teacher()
        student, teacher = self.student.metric(metric, Split.TEST), self.teachers[best].metric(metric, Split.TEST) if best else None
        return student / teacher if student is not None and teacher else None

    # ---- the earlier dict views, for readers of result.json ---------------------------------------
    @property
    def student_metrics(self) -> dict[str, Any]:
        return {**self.student.validation, "epoch": self.student.epoch}

    @property
    def teacher_metrics(self) -> dict[str, dict[str, float]]:
        return {name: dict(scores.validation) for name, scores in self.teachers.items()}

    @property
    def summary(self) -> dict[str, Any]:
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "student_dir": str(self.student_dir),
            "seconds": self.seconds,
            "data": self.data,
            "select": self.select,
            "stages": {
                "cofinetune": {
                    **self.cofinetune.to_json(),
                    "teachers": {n: {**s.validation, "test": s.test} for n, s in self.teachers.items()},
                    "epoch": next(iter(self.teachers.values())).epoch if self.teachers else None,
                },
                "teacher_cache": self.teacher_cache.to_json() if self.teacher_cache else None,
                "distill": {**self.distill.to_json(), "metrics": self.student_metrics, "test": self.student.test},
            },
            "test_note": self.test_note,
            "predictions": self.predictions,
            "params": {
                "teachers": {n: s.params for n, s in self.teachers.items()},
                "shared_head": self.shared_head_params,
                "student": self.student.params,
            },
            "layer_maps": self.layer_maps,
            "decisions": self.decisions,
        }

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExperimentResult":
        stages = data["stages"]
        params = data.get("params", {})
        co = stages["cofinetune"]
        teachers = {
            name: ModelScores({k: v for k, v in m.items() if k != "test"}, m.get("test"), params.get("teachers", {}).get(name, 0),
                              co.get("epoch"))
            for name, m in co["teachers"].items()
        }
        distill = stages["distill"]
        student_validation = {k: v for k, v in distill["metrics"].items() if k != "epoch"}
        return cls(
            name=data.get("name", ""),
            run_dir=Path(data["run_dir"]),
            student_dir=Path(data["student_dir"]),
            seconds=float(data.get("seconds", 0.0)),
            data=data.get("data", {}),
            select=data.get("select", {"metric": "accuracy", "mode": "max"}),
            cofinetune=_stage(co),
            teacher_cache=_stage(stages["teacher_cache"]) if stages.get("teacher_cache") else None,
            distill=_stage(distill),
            teachers=teachers,
            student=ModelScores(student_validation, distill.get("test"), params.get("student", 0), distill["metrics"].get("epoch")),
            shared_head_params=params.get("shared_head", 0),
            layer_maps=data.get("layer_maps", []),
            decisions=data.get("decisions", {}),
            test_note=data.get("test_note"),
            predictions=data.get("predictions"),
        )

    @classmethod
    def from_run(cls, run: "FinishedRun") -> "ExperimentResult":
        """The result of a finished experiment from what its stages made; test scores only for a labelled test split."""
        ctx, teachers = run.ctx, run.teachers
        cfg, data = ctx.config, ctx.data
        labelled = data.labelled.get("test", False)
        teacher_test = teachers.meta.get("test") or {}
        best = run.distilled.best_metrics
        return cls(
            name=cfg.name,
            run_dir=Path(run.student_dir).parent,
            student_dir=Path(run.student_dir),
            seconds=run.seconds,
            data={"dataset_key": data.dataset_key, "rows": data.rows, "label_names": data.label_names, "pair": data.pair,
                  "metrics": data.metrics},
            select={"metric": ctx.select_metric, "mode": cfg.select.mode},
            cofinetune=StageSummary(teachers.key, str(teachers.path), teachers.reused, teachers.seconds),
            teacher_cache=StageSummary(run.cache.key, str(run.cache.path), run.cache.reused, run.cache.seconds) if run.cache else None,
            distill=StageSummary("", str(run.distilled.best_checkpoint), False, run.distill_seconds),
            teachers={
                name: ModelScores(scores_from(teachers.meta["metrics"], Split.VALIDATION, teacher_head(i)),
                                  scores_from(teacher_test, Split.TEST, teacher_head(i)) if labelled else None,
                                  run.params["teachers"][name], teachers.meta.get("epoch"))
                for i, name in enumerate(cfg.teachers)
            },
            student=ModelScores(scores_from(best, Split.VALIDATION),
                                scores_from(run.student_test or {}, Split.TEST) if labelled else None,
                                run.params["student"], int(best["epoch"])),
            shared_head_params=run.params["shared_head"],
            layer_maps=ctx.layer_maps,
            decisions=run.decisions,
            test_note=run.test_note,
            predictions=run.predictions,
        )

    @classmethod
    def read(cls, path: Path) -> "ExperimentResult":
        return cls.from_json(json.loads(Path(path).read_text()))


def _stage(data: dict[str, Any]) -> StageSummary:
    return StageSummary(data.get("key", ""), data.get("checkpoint", ""), bool(data.get("reused")), float(data.get("seconds", 0.0)))
