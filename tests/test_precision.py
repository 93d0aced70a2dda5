"""The GPU path's numerics, checked on CPU: bf16 autocast, gradient accumulation, resume on the model's device."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mtbert_ray.config import DataConfig, LossConfig
from mtbert_ray.core.collate import PadCollate, inputs_for
from mtbert_ray.core.loop import LoopSpec, Optimization, build_and_resume
from mtbert_ray.core.losses import SoftLabels, mt_distill_loss, task_loss
from mtbert_ray.core.objective import HiddenStates, mt_bert_objective
from mtbert_ray.core.targets import teacher_targets
from mtbert_ray.core.training import autocast, save_training_state
from mtbert_ray.data.shards import prepare_data
from mtbert_ray.models.student import build_student
from mtbert_ray.models.teachers import TeacherEnsemble
from tests.conftest import RT_POLARITY

#: bf16 keeps 8 mantissa bits: each rounding in a matmul is off by ≤ 2^-9 ≈ 0.2 % relative; the losses themselves
#: run in float32 (``losses._full``), and errors of independent roundings average out. Allowed: 1 % relative
#: (measured on these tiny models: 4.3e-6).
BF16_LOSS_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def batch64(tiny_models, tmp_path_factory):
    """64 examples of rt_polarity tokenized for the tiny teachers and student, and their teachers' targets."""
    teachers = [tiny_models["bert"], tiny_models["roberta"]]
    data = prepare_data(DataConfig(source="files", path=str(RT_POLARITY), text_fields=["sentence"], limit_train=64,
                                   limit_eval=8, max_length=32, cache_dir=str(tmp_path_factory.mktemp("cache"))),
                        [*teachers, tiny_models["bert"]])
    import pyarrow.parquet as pq

    table = pq.read_table(data.splits["train"])
    tokenizations = [data.model_tokenization[t] for t in teachers]
    collate = PadCollate({t: data.tokenizations[t].pad_token_id for t in set(tokenizations)})
    batch = collate({c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names})
    torch.manual_seed(0)
    ensemble = TeacherEnsemble(teachers, data.num_labels, query_dim=8).eval()
    return {"batch": batch, "data": data, "ensemble": ensemble, "teachers": tokenizations,
            "student": data.model_tokenization[tiny_models["bert"]]}


def _loss(student, setup, batch, precision: str) -> torch.Tensor:
    """L = L_Task + L_MT-Dis + L_MT-Hid (identity W) of one batch, forward passes under ``precision``."""
    with autocast(torch.device("cpu"), precision):
        logits, states = teacher_targets(setup["ensemble"], batch, setup["teachers"], setup["student"], [[2], [2]])
        s_in = inputs_for(batch, setup["student"])
        out = student.forward_batch(s_in, output_hidden_states=True)
        projections = [[torch.nn.Linear(h.shape[-1], 32, bias=False).requires_grad_(False) for h in per] for per in states]
        for per in projections:
            for w in per:
                torch.nn.init.eye_(w.weight) if w.weight.shape[0] == w.weight.shape[1] else torch.nn.init.constant_(w.weight, 0.02)
        return mt_bert_objective(out.logits, batch["label"], logits, LossConfig(temperature=2.0),
                                 HiddenStates(out.hidden_states[1:], states, projections, s_in["attention_mask"]))["loss"]


def test_bf16_autocast_runs_on_cpu_within_tolerance_of_fp32(batch64, tiny_models):
    torch.manual_seed(1)
    student = build_student(tiny_models["bert"], 1, 2, query_dim=8).eval()
    full = _loss(student, batch64, batch64["batch"], "fp32")
    half = _loss(student, batch64, batch64["batch"], "bf16")
    assert half.dtype == torch.float32, "losses are computed in float32 under autocast"
    assert float(half) == pytest.approx(float(full), rel=BF16_LOSS_TOLERANCE)
    assert float(half) != float(full), "autocast did not change the arithmetic: bf16 did not run"


class _Step:
    """A minimal ``train.loop.Step``: the student with task + distillation loss (means over the batch)."""

    heads = [""]

    def __init__(self, student, setup) -> None:
        self.student, self.setup = student, setup

    def build(self, device):
        return self.student.to(device)

    def optimizer_groups(self):
        return [{"params": list(self.student.parameters()), "lr": 1e-3}]

    def loss(self, module, batch):
        logits = module.forward_batch(inputs_for(batch, self.setup["student"])).logits
        t_logits, _ = teacher_targets(self.setup["ensemble"], batch, self.setup["teachers"], self.setup["student"])
        terms = {"task": task_loss(logits, batch["label"]), "distill": mt_distill_loss(logits, t_logits, batch["label"], SoftLabels(temperature=2.0))}
        terms["loss"] = terms["task"] + terms["distill"]
        return terms


def _half(batch: dict, part: int) -> dict:
    return {k: v[32 * part: 32 * (part + 1)] for k, v in batch.items()}


def test_accumulating_two_micro_batches_of_32_is_one_step_of_64(batch64, tiny_models):
    """Task and distillation terms are batch means, so the mean of two half-batch gradients is the full one
    (fp32, 1e-5). Dropout is off (eval mode) so both sides see the same network."""
    torch.manual_seed(2)
    student = build_student(tiny_models["bert"], 1, 2, query_dim=8).eval()
    one, two = copy.deepcopy(student), copy.deepcopy(student)
    whole = Optimization(torch.optim.Adam(one.parameters(), lr=1e-3), grad_accum_steps=1)
    accumulated = Optimization(torch.optim.Adam(two.parameters(), lr=1e-3), grad_accum_steps=2)
    whole.micro_step(_Step(one, batch64), one, batch64["batch"])
    for part in (0, 1):
        accumulated.micro_step(_Step(two, batch64), two, _half(batch64["batch"], part))
    assert accumulated.pending == 0, "the second micro-batch applied the step"
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(one.parameters(), student.parameters()))
    assert moved > 0, "no parameter changed: the comparison would be empty"


class _Session:
    world_size, rank = 1, 0

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @contextmanager
    def latest_checkpoint(self):
        yield self.folder


class _LinearStep:
    heads = [""]

    def build(self, device):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 2).to(device)
        return self.module

    def optimizer_groups(self):
        return [{"params": list(self.module.parameters()), "lr": 0.1}]

    def load(self, folder):
        pass


def test_resume_puts_the_optimizer_state_on_each_parameters_device(tmp_path):
    """The checkpoint's Adam moments were saved from CPU; resumed onto a model on another device (``meta``
    stands in for a GPU on this CPU machine) they must land on that device, not stay on the CPU."""
    cpu = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(cpu.parameters(), lr=0.1)
    cpu(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path, optimizer, {"epoch": 0})
    spec = LoopSpec(stage="t", epochs=2, micro_batch=1, grad_accum_steps=1, seed=0, select="accuracy", mode="max",
                    precision="fp32", use_gpu=False, threads=None, train_rows=1, num_labels=2)
    device = torch.device("meta")
    module, optimization = build_and_resume(_LinearStep(), _Session(tmp_path), spec, device)
    state = optimization.optimizer.state
    assert len(state) == 2
    for param in module.parameters():
        assert param.device == device
        for key, value in state[param].items():
            if key != "step":  # torch keeps Adam's scalar step counter on the CPU by design (not capturable)
                assert value.device == param.device, f"{key} on {value.device}, parameter on {param.device}"
