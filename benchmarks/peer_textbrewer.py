"""Our logits-only multi-teacher distillation step vs TextBrewer's ``MultiTeacherDistiller``.

Same teachers (MiniLM-L6 and MiniLM-L3 with the shared attentive-pooling head, frozen, run on the
fly), same 2-layer student weights (two copies of one initialisation), same batches (rt_polarity,
32 × dynamic padding ≤ 64), same optimizer (Adam, lr 1e-4), 2 threads, CPU.

- ours: ``mtbert_ray.core.steps.distill.DistillStep`` through ``train.loop.Optimization`` — MT-BERT's weighted multi-teacher soft
  loss + task loss (``loss.hidden: false``), the step the Ray Train loop runs;
- TextBrewer 0.2.1.post1: ``MultiTeacherDistiller.train(num_steps=...)`` — averaged-logit KD loss +
  hard-label loss (its model checkpoint save at the last step is switched off: it is not a step cost).

Also checks that our ``ensemble_distill_loss(mode="average_logits")`` equals TextBrewer's
multi-teacher KD loss on one batch (TextBrewer averages the teachers' *logits*; our ``average``
ensemble averages their *probabilities* — both are printed).

Needs the peer: ``pip install "textbrewer==0.2.1.post1" tensorboard`` (``pip install -e .[bench]``).
Last line: ``step_throughput_ratio=<our steps/s ÷ TextBrewer's>``.
"""
from __future__ import annotations

import argparse
import copy
import logging
import tempfile

from _common import DATA, MINILM_L3, MINILM_L6, THREADS, header, median, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="steps per timing")
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()

    try:
        import textbrewer
        from textbrewer import DistillationConfig, MultiTeacherDistiller, TrainingConfig
    except ImportError as exc:
        raise SystemExit(f"textbrewer is not installed ({exc}); pip install 'textbrewer==0.2.1.post1' tensorboard") from None
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mtbert_ray.config import validate_config
    from mtbert_ray.core.loop import Optimization
    from mtbert_ray.core.losses import SoftLabels, ensemble_distill_loss
    from mtbert_ray.core.steps.distill import DistillModule, DistillSpec, DistillStep
    from mtbert_ray.models.hub import load_tokenizer
    from mtbert_ray.models.student import build_student
    from mtbert_ray.models.teachers import TeacherEnsemble

    logging.getLogger("Distillation").setLevel(logging.WARNING)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    header(f"peer_textbrewer: multi-teacher distillation step, ours vs TextBrewer {textbrewer.__version__}")

    tok = load_tokenizer(MINILM_L6)
    texts = pq.read_table(DATA / "train.parquet", columns=["sentence", "label"]).slice(0, 32 * args.steps)
    probe = texts["sentence"].to_pylist()[:64]
    assert load_tokenizer(MINILM_L3)(probe)["input_ids"] == tok(probe)["input_ids"], "the teachers' tokenizers differ"
    batches = []
    for start in range(0, texts.num_rows, 32):
        chunk = texts.slice(start, 32)
        enc = tok(chunk["sentence"].to_pylist(), padding=True, truncation=True, max_length=64, return_tensors="pt")
        batches.append({**{k: v for k, v in enc.items()}, "labels": torch.tensor(chunk["label"].to_pylist())})

    teachers = TeacherEnsemble([MINILM_L6, MINILM_L3], num_labels=2).eval()
    for p in teachers.parameters():
        p.requires_grad_(False)
    student_init = build_student(MINILM_L6, 2, num_labels=2)

    # ---- ours -------------------------------------------------------------------------------
    cfg = validate_config({
        "teachers": [MINILM_L6, MINILM_L3], "student": {"init_from": MINILM_L6, "num_layers": 2},
        "data": {"source": "files", "path": str(DATA), "text_fields": ["sentence"]},
        "distill": {"lr": 1e-4}, "loss": {"hidden": False, "temperature": args.temperature},
    })
    ours_module = DistillModule(copy.deepcopy(student_init), None)
    optimization = Optimization(torch.optim.Adam(ours_module.parameters(), lr=1e-4))
    # The stage-3 step on both teachers (one shared tokenization "tok"), its module and the frozen teachers set directly.
    spec = DistillSpec(student=cfg.student, loss=cfg.loss, lr=1e-4, num_labels=2, label_names=["0", "1"],
                       teacher_tokenizations=["tok", "tok"], student_tokenization="tok", pad_ids={"tok": 0}, teacher_widths=[],
                       layer_maps=[], hidden_teachers=[], head_folder=None, teachers_checkpoint=None)
    step = DistillStep(spec)
    step.module, step.ensemble = ours_module, teachers
    ours_batches = [{"label": b["labels"], **{f"tok.{k}": v for k, v in b.items() if k != "labels"}} for b in batches]

    def run_ours() -> None:
        ours_module.train()
        for batch in ours_batches:
            optimization.micro_step(step, ours_module, batch)

    # ---- TextBrewer -------------------------------------------------------------------------
    class OneTeacher(nn.Module):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            out = teachers.encoders[self.index](**{k: v for k, v in feed.items() if v is not None})
            head, source = teachers.head_for(self.index)
            return {"logits": head(out.last_hidden_state, attention_mask, source=source)}

    class StudentForTextBrewer(nn.Module):
        def __init__(self, student) -> None:
            super().__init__()
            self.student = student

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            logits = self.student(input_ids, attention_mask, token_type_ids).logits
            return {"logits": logits, "loss": F.cross_entropy(logits, labels)}

    tb_student = StudentForTextBrewer(copy.deepcopy(student_init))
    tb_optimizer = torch.optim.Adam(tb_student.parameters(), lr=1e-4)
    out_dir = tempfile.mkdtemp(prefix="textbrewer-")
    distiller = MultiTeacherDistiller(
        TrainingConfig(device="cpu", output_dir=out_dir, log_dir=None, ckpt_steps=args.steps),
        DistillationConfig(temperature=args.temperature, kd_loss_type="ce", kd_loss_weight=1.0, hard_label_weight=1.0),
        model_T=[OneTeacher(0), OneTeacher(1)],
        model_S=tb_student,
        adaptor_T=lambda batch, out: {"logits": out["logits"]},
        adaptor_S=lambda batch, out: {"logits": out["logits"], "losses": out["loss"]},
    )
    distiller.save_and_callback = lambda *a, **k: None  # a model save, not a training step

    def run_textbrewer() -> None:
        tb_student.train()  # as ours: dropout on in the student, teachers in eval mode
        distiller.train(tb_optimizer, batches, num_steps=len(batches))

    # ---- the average-ensemble soft loss on one batch, both ways -----------------------------
    tb_student.eval()
    with torch.no_grad():
        batch = batches[0]
        _, losses = distiller.train_on_batch(batch, {})
        tb_kd = float(losses["unweighted_kd_loss"])
        student_logits = tb_student(**batch)["logits"]
        teacher_logits = torch.stack([OneTeacher(i)(**batch)["logits"] for i in range(2)])
        ours_logit_avg = float(ensemble_distill_loss(student_logits, teacher_logits, batch["labels"],
                                                    SoftLabels(temperature=args.temperature, ensemble="average_logits")))
        ours_prob_avg = float(ensemble_distill_loss(student_logits, teacher_logits, batch["labels"],
                                                   SoftLabels(temperature=args.temperature, ensemble="average")))
    difference = abs(ours_logit_avg - tb_kd)
    print(f"average-ensemble soft loss, batch 0, T={args.temperature}: TextBrewer {tb_kd:.8f}  ours(average_logits) "
          f"{ours_logit_avg:.8f}  |diff| {difference:.2e}  (ours 'average' of probabilities: {ours_prob_avg:.8f})")

    # ---- step throughput, interleaved --------------------------------------------------------
    run_ours()
    run_textbrewer()  # warm-up both
    ours, peer = [], []
    for _ in range(args.repeats):
        ours.append(timed(run_ours)[0])
        peer.append(timed(run_textbrewer)[0])
    ours_rate, peer_rate = len(batches) / median(ours), len(batches) / median(peer)
    print(f"steps/s (median of {args.repeats} × {len(batches)} steps): ours {ours_rate:.3f}  TextBrewer {peer_rate:.3f}")
    print(f"loss_abs_difference={difference:.2e}")
    print(f"step_throughput_ratio={ours_rate / peer_rate:.3f}")


if __name__ == "__main__":
    main()
