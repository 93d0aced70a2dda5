"""GPU memory per stage in the dry run (``mtbert_ray.tools.memory_fit``): the arithmetic, and the lines a GPU plan prints."""
from __future__ import annotations

import pytest

from mtbert_ray.tools.memory_fit import (
    CUDA_CONTEXT_GB,
    GB,
    EncoderShape,
    activation_bytes,
    advice,
    cofinetune_memory,
    distill_memory,
)

BASE = EncoderShape(params=109_482_240, layers=12, hidden=768, heads=12)  # bert-base's shape


def test_the_optimizer_terms_are_16_bytes_per_parameter_plus_the_autocast_copy():
    fp32 = cofinetune_memory([BASE], 16, 128, "fp32", False)
    bf16 = cofinetune_memory([BASE], 16, 128, "bf16", False)
    assert fp32.parts["weights"] + fp32.parts["gradients"] + fp32.parts["Adam"] == 16 * BASE.params
    assert "autocast copies" not in fp32.parts and bf16.parts["autocast copies"] == 2 * BASE.params
    assert fp32.parts["CUDA context"] == CUDA_CONTEXT_GB * GB


def test_activations_follow_the_per_layer_formula_and_checkpointing_shrinks_them():
    s, b, h, a = 128, 16, 768, 12
    per_layer = s * b * h * (34 + 5 * a * s / h)
    assert activation_bytes(BASE, 12, b, s, "bf16", False) == pytest.approx(12 * per_layer)
    assert activation_bytes(BASE, 12, b, s, "fp32", False) == pytest.approx(24 * per_layer)
    assert activation_bytes(BASE, 12, b, s, "bf16", True) == pytest.approx(12 * 2 * s * b * h + per_layer)


def test_the_paper_setting_and_what_does_not_fit():
    """Three 12 × 768 teachers co-finetuned at micro-batch 16 × 128 in bf16 fit a 24 GB card (~9 GB); the same at
    micro-batch 512 × 512 in fp32 fits none, and the advice names the settings that shrink it."""
    paper = cofinetune_memory([BASE] * 3, 16, 128, "bf16", False)
    assert 5 * GB < paper.total < 24 * GB and "fits a 24 GB card" in paper.describe()
    huge = cofinetune_memory([BASE] * 3, 512, 512, "fp32", False)
    assert "fits no card up to 141 GB" in huge.describe()
    line = advice(huge, "cofinetune")
    assert "cofinetune.grad_accum_steps" in line and "gradient_checkpointing" in line and "bf16" in line
    student = EncoderShape(params=67_000_000, layers=6, hidden=768, heads=12)
    cached = distill_memory(student, 6, [BASE] * 3, [0, 1, 2], 16, 128, "bf16", cached=True)
    fly = distill_memory(student, 6, [BASE] * 3, [0, 1, 2], 16, 128, "bf16", cached=False)
    assert "frozen teachers" not in cached.parts and fly.parts["frozen teachers"] == 6 * 3 * BASE.params
    assert cached.parts["hidden-loss states"] == 16 * 128 * (3 * 768 + 768) * 6 * 4


def test_a_gpu_plan_prints_its_memory(tiny_models, tmp_path):
    import yaml

    from mtbert_ray.config.space import load_space
    from mtbert_ray.study.dryrun import plan
    from tests.conftest import tiny_experiment

    base = tiny_experiment(tiny_models, tmp_path, resources={"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "gpu", "experiment": base, "space": {"loss.temperature": {"grid": [1.0]}}}))
    text = plan(load_space(space))
    assert "GPU memory (reasoned" in text
    assert "co-finetuning: ~1.0 GB per GPU worker" in text and "fits a 24 GB card" in text
    assert "peak 2.5 CPU + 1 GPU" in text  # driver 0.5 + a 1-CPU GPU worker + a read task; one GPU, not two
    assert "stage-3 input (reasoned, mtbert_ray/tools/input_rate.py): one H100" in text


def test_the_paper_students_hidden_state_cache_is_input_bound_on_one_h100():
    """6 × 768 student, 128 tokens, three 768-wide teachers: ~31 GFLOP a row, so an H100 at 40 % of its bf16 peak
    trains ~9,500 rows/s; hidden states of 6 layers × 2,304 widths × 128 tokens in float16 are 3.5 MB a row —
    ~34 GB/s, hundreds of cores — while logits only need one core."""
    from mtbert_ray.tools.input_rate import ASSUMED_MFU, H100_BF16_FLOPS, feed_rate, student_flops_per_row

    flops = student_flops_per_row(6 * 12 * 768 ** 2, 6, 768, 128, (768, 768, 768))
    assert flops == pytest.approx(6 * 6 * 12 * 768 ** 2 * 128 + 12 * 6 * 128 ** 2 * 768 + 6 * 128 * 6 * 2304 * 768)
    hidden = feed_rate(flops, 128 * 2304 * 6 * 2, bytes_per_core_s=100e6)
    assert hidden.gpu_rows_per_s == pytest.approx(ASSUMED_MFU * H100_BF16_FLOPS / flops)
    assert 9_000 < hidden.gpu_rows_per_s < 10_000 and hidden.cpus_per_gpu > 300
    assert feed_rate(flops, 2_600, bytes_per_core_s=100e6).cpus_per_gpu == 1
