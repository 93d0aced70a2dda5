"""The exported student's model card (``README.md`` in the folder), written with ``huggingface_hub.ModelCard``.

What a user deciding whether to deploy the student needs, from the run that made it: the task and labels, the teachers,
the checkpoint the student's layers come from, the data, validation and test scores (seeds and intervals where a
sweep gives them), how the checkpoint was selected, the size, measured speed (when ``export onnx`` has measured it),
the licences of what it was made from (from their own cards where the cache has them), and how to load it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, try_to_load_from_cache

CARD_FILE = "README.md"


def model_licence(name: str) -> str | None:
    """The ``license`` of a hub model's own card, when its README is in the local cache (never a download)."""
    if Path(name).expanduser().exists():
        return None
    try:
        path = try_to_load_from_cache(name, "README.md")
        if isinstance(path, str):
            return ModelCard.load(path).data.to_dict().get("license")
    except Exception:  # noqa: BLE001 - a licence we cannot read is reported as unknown
        return None
    return None


def _scores(scores: Mapping[str, float] | None) -> str:
    if not scores:
        return "—"
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, (int, float)) and k not in ("examples", "epoch"))


def _figure(row: Mapping[str, Any], key: str, spec: str) -> str:
    """``row[key]`` formatted with ``spec``; "—" where the measurement is absent (an older report) or not a number."""
    value = row.get(key)
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _figures_table(title: str, first: str, rows: Mapping[str, Any], columns: list[tuple[str, str, str]]) -> list[str]:
    """A ``## title`` section with a Markdown table: one row per entry of ``rows`` (its name in column ``first``), one
    column per (header, key, format spec)."""
    lines = [f"## {title}", "", f"| {first} | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        if isinstance(row, Mapping):
            lines.append(f"| {name} | " + " | ".join(_figure(row, key, spec) for _, key, spec in columns) + " |")
    return [*lines, ""]


def card_text(meta: Mapping[str, Any], result: Mapping[str, Any] | None = None, speed: Mapping[str, Any] | None = None,
              seeds: Mapping[str, Any] | None = None, gates: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """(card metadata, Markdown body) of a student from its ``mtbert_student.json`` meta, the run's ``result.json``
    (optional), the measured speed (optional) and a sweep's seed summary (optional: {metric: "mean ± half-width (n)"})."""
    labels = list(meta.get("label_names") or [])
    teachers = list(meta.get("teachers") or [])
    init_from = meta.get("init_from")
    licences = {name: model_licence(name) for name in dict.fromkeys([*teachers, *([init_from] if init_from else [])])}
    known = sorted({v for v in licences.values() if v})
    data: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["mtbert-ray", "knowledge-distillation", "multi-teacher-distillation", "text-classification"],
        **({"license": known[0]} if len(known) == 1 else {}),
        **({"base_model": init_from} if init_from and not Path(init_from).expanduser().exists() else {}),
    }
    result = result or {}
    stages = result.get("stages") or {}
    student = (stages.get("distill") or {})
    validation, test = student.get("metrics") or {}, student.get("test") or {}
    select = result.get("select") or {}
    dataset = result.get("data") or {}
    lines = [
        f"# MT-BERT student: {meta.get('num_layers', '?')}-layer text classifier",
        "",
        f"Distilled with mtbert-ray from {len(teachers)} teacher(s) (MT-BERT, Wu, Wu & Huang 2021: "
        "multi-teacher hidden loss, correctness-weighted soft labels, task loss).",
        "",
        "## Task and labels",
        f"- {'sentence-pair' if meta.get('pair') else 'single-sentence'} classification into {len(labels)} classes: "
        + ", ".join(f"`{n}`" for n in labels),
        f"- inputs are truncated to {meta.get('max_length', '?')} tokens (the length it was trained with)",
        "",
        "## Made from",
        f"- student layers: the first {meta.get('num_layers', '?')} layers of `{init_from}`",
        *[f"- teacher: `{t}`" for t in teachers],
        *([f"- data: {dataset.get('source', '?')} {dataset.get('task') or dataset.get('path') or ''} — rows "
           f"{dataset.get('rows')}"] if dataset else []),
        "",
        "## Scores",
        f"- selection: the epoch with the best validation {select.get('metric', '?')} ({select.get('mode', 'max')}); "
        "test was measured once, on that checkpoint",
        f"- validation: {_scores(validation)}",
        f"- test: {_scores(test)}",
        *([f"- over seeds: {', '.join(f'{k} {v}' for k, v in seeds.items())}"] if seeds else []),
        *([f"- parameters: {result['params'].get('student'):,}"] if isinstance(result.get("params"), dict)
          and isinstance(result["params"].get("student"), int) else []),
        "",
    ]
    if speed:
        lines += _figures_table("Speed (measured on the exporting machine, side by side in one process, one thread)",
                                "runtime", speed, [("batch 1 p50 ms", "p50_ms", ".2f"), ("batch 1 p95 ms", "p95_ms", ".2f"),
                                                   ("batch 8 rows/s", "batch8_rows_per_s", ",.0f"),
                                                   ("batch 32 rows/s", "batch32_rows_per_s", ",.0f")])
    served = (result or {}).get("served") if isinstance(result, Mapping) else None
    if isinstance(served, Mapping) and served:
        lines += _figures_table("Speed served (Ray Serve on the exporting machine; a client in another process)", "request",
                                served, [("rows/s", "rows_per_s", ",.0f"), ("p50 ms", "p50_ms", ".2f"), ("p99 ms", "p99_ms", ".2f")])
    if gates:
        lines += ["## Deploy gate (each runtime against PyTorch on the validation split)", ""]
        for runtime, verdict in gates.items():
            if isinstance(verdict, Mapping):
                lines.append(f"- {runtime}: {'kept' if verdict.get('kept') else 'not kept'} — {verdict.get('reason', '')}")
        lines.append("")
    lines += [
        "## Licences of what it was made from",
        *[f"- `{name}`: {lic or 'unknown here — see its own model card'}" for name, lic in licences.items()],
        "- the data: see its own licence",
        "",
        "## How to use it",
        "```python",
        "import mtbert_ray  # registers the model type with transformers' Auto classes: no remote code runs",
        "from transformers import pipeline",
        "clf = pipeline(\"text-classification\", model=\"PATH/TO/THIS/FOLDER\")",
        "clf(\"a fine film\", truncation=True)",
        "```",
        "Without mtbert-ray installed, the folder's own model code (`hf_student.py`, torch and transformers only) runs "
        "if you allow it: read that file, then pass `trust_remote_code=True` to `pipeline`. ONNX: `python -m "
        "mtbert_ray.export onnx FOLDER --int8`; Ray Serve: `serve run mtbert_ray.serve:app model_dir=FOLDER`.",
    ]
    return data, "\n".join(lines) + "\n"


def write_model_card(folder: Path, meta: Mapping[str, Any], result: Mapping[str, Any] | None = None,
                     speed: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
                     gates: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder/README.md``; ``ModelCard.load`` parses it back."""
    data, body = card_text(meta, result, speed, seeds, gates)
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n{body}")
    card.save(str(folder / CARD_FILE))
    return folder / CARD_FILE
