"""Inference throughput (batch 32, length 64) and parameter count of the exported student vs each teacher.

The student is exported exactly as a run exports it (``save_student`` → ``StudentClassifier``
folder) and timed through the loaded export; each teacher is timed as the classifier it is in
co-finetuning (its encoder + attentive pooling + dense head). Same 32 rt_polarity sentences,
padded to 64 tokens, ``torch.no_grad``, 2 threads; models interleaved in every repeat, median.

Last line: ``student_speedup=<student throughput / deepest teacher's>``; target: at least 0.8 × that
teacher's layer ratio (L / K).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import DATA, MINILM_L3, MINILM_L6, THREADS, header, median, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="batches per timing")
    parser.add_argument("--student-layers", type=int, default=2)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import torch

    from mtbert_ray.deploy.classifier import StudentClassifier
    from mtbert_ray.models.hub import load_tokenizer
    from mtbert_ray.models.student import build_student
    from mtbert_ray.models.student_io import save_student

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    header("student_speed: inference throughput, batch 32 × length 64")
    texts = pq.read_table(DATA / "validation.parquet", columns=["sentence"])["sentence"].to_pylist()[:32]

    models: dict[str, tuple[torch.nn.Module, int, int]] = {}  # name → (model, layers, params)
    with tempfile.TemporaryDirectory() as tmp:
        student = build_student(MINILM_L6, args.student_layers, num_labels=2)
        folder = Path(tmp) / "student"
        save_student(student, folder, ["negative", "positive"])
        load_tokenizer(MINILM_L6).save_pretrained(folder)
        exported = StudentClassifier.from_pretrained(folder)
        model = exported.model.eval()
        models[f"student ({args.student_layers} layers of MiniLM-L6)"] = (model, args.student_layers, sum(p.numel() for p in model.parameters()))
    for name in (MINILM_L6, MINILM_L3):
        from transformers import AutoConfig

        depth = AutoConfig.from_pretrained(name).num_hidden_layers
        teacher = build_student(name, depth, num_labels=2).eval()  # the full encoder + pooling + head
        models[f"teacher {name.split('/')[-1]}"] = (teacher, depth, sum(p.numel() for p in teacher.parameters()))

    tok = load_tokenizer(MINILM_L6)  # both MiniLM teachers use this WordPiece vocabulary
    batch = dict(tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"))
    assert batch["input_ids"].shape == (32, 64)

    def run(model) -> None:
        with torch.no_grad():
            for _ in range(args.batches):
                model.forward_batch(batch)

    for model, _, _ in models.values():
        run(model)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, (model, _, _) in models.items():
            seconds[name].append(timed(lambda: run(model))[0])

    throughput = {name: 32 * args.batches / median(s) for name, s in seconds.items()}
    student_name = next(iter(models))
    print(f"{'model':<40} {'layers':>6} {'params':>12} {'examples/s':>11} {'speed-up':>9} {'target':>7}")
    for name, (_, layers, params) in models.items():
        speedup = throughput[student_name] / throughput[name]
        target = "" if name == student_name else f"{0.8 * layers / args.student_layers:.2f}"
        print(f"{name:<40} {layers:>6} {params:>12,} {throughput[name]:>11.1f} {speedup:>9.2f} {target:>7}")
    deepest = max((n for n in models if n != student_name), key=lambda n: models[n][1])
    print(f"student_speedup={throughput[student_name] / throughput[deepest]:.2f}")


if __name__ == "__main__":
    main()
