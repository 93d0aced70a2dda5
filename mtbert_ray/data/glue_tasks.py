"""The GLUE classification tasks: field names on the hub and in the original TSV files, label names."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    name: str
    hub_fields: tuple[str, ...]  # text columns in nyu-mll/glue
    tsv_fields: tuple[str, ...]  # text columns in the original TSV files
    tsv_label: str  # label column in the TSV files (names or ids)
    labels: tuple[str, ...]  # label names in id order (as on the hub)
    dev_file: str = "dev.tsv"
    hub_validation: str = "validation"
    tsv_header: bool = True
    tsv_columns: tuple[str, ...] | None = None  # column names for header-less TSVs (CoLA)
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", ("sentence",), ("sentence",), "label", ("unacceptable", "acceptable"),
                 tsv_header=False, tsv_columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", ("sentence",), ("sentence",), "label", ("negative", "positive")),
        GlueTask("mrpc", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent")),
        GlueTask("qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate")),
        GlueTask("mnli", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv", hub_validation="validation_matched"),
        GlueTask("qnli", ("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment")),
        GlueTask("rte", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
        GlueTask("wnli", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("not_entailment", "entailment")),
    ]
}

#: Folder names of the original GLUE download (``glue_data/SST-2`` …), accepted as data.path children.
GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
