"""The GLUE classification tasks: field names on the hub and in the original TSV files, label names,
the leaderboard's metrics and the benchmark's submission file for test predictions."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    name: str
    hub_fields: tuple[str, ...]  # text columns in nyu-mll/glue
    tsv_fields: tuple[str, ...]  # text columns in the original TSV files
    tsv_label: str  # label column in the TSV files (names or ids)
    labels: tuple[str, ...]  # label names in id order (as on the hub)
    submission_file: str  # the file the GLUE server expects for this task's test predictions
    submission_labels: tuple[str, ...] = ("0", "1")  # how each class (by id) is written in that file
    metrics: tuple[str, ...] = ("accuracy",)  # as the GLUE leaderboard reports the task, main metric first
    dev_file: str = "dev.tsv"
    test_file: str = "test.tsv"
    hub_validation: str = "validation"
    hub_test: str = "test"
    tsv_header: bool = True
    tsv_columns: tuple[str, ...] | None = None  # column names for header-less TSVs (CoLA train/dev)


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", ("sentence",), ("sentence",), "label", ("unacceptable", "acceptable"), "CoLA.tsv",
                 metrics=("mcc",), tsv_header=False, tsv_columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", ("sentence",), ("sentence",), "label", ("negative", "positive"), "SST-2.tsv"),
        GlueTask("mrpc", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"),
                 "MRPC.tsv", metrics=("f1", "accuracy")),
        GlueTask("qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
                 "QQP.tsv", metrics=("f1", "accuracy")),
        GlueTask("mnli", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), "MNLI-m.tsv", ("entailment", "neutral", "contradiction"),
                 dev_file="dev_matched.tsv", test_file="test_matched.tsv", hub_validation="validation_matched",
                 hub_test="test_matched"),
        GlueTask("qnli", ("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment"),
                 "QNLI.tsv", ("entailment", "not_entailment")),
        GlueTask("rte", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
                 "RTE.tsv", ("entailment", "not_entailment")),
        GlueTask("wnli", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"),
                 "WNLI.tsv"),
    ]
}

#: Folder names of the original GLUE download (``glue_data/SST-2`` …), accepted as data.path children.
GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
