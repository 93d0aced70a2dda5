"""The torch-only core: the models, losses, steps, epoch-loop optimisation and checkpoints import and run where
``import ray`` fails, and ``python -m mtbert_ray.device_check --tiny --cpu`` passes there (what a lent GPU machine
without Ray runs, at CPU scale)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

BLOCK_RAY = """
import importlib.abc, sys
class _NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is not installed here")
sys.meta_path.insert(0, _NoRay())
"""

CORE = ["mtbert_ray.core.losses", "mtbert_ray.models.student", "mtbert_ray.models.teachers", "mtbert_ray.models.projection",
        "mtbert_ray.models.align", "mtbert_ray.models.layer_map", "mtbert_ray.core.targets", "mtbert_ray.core.objective",
        "mtbert_ray.core.loop", "mtbert_ray.core.steps.cofinetune", "mtbert_ray.core.steps.distill", "mtbert_ray.core.training",
        "mtbert_ray.deploy.export", "mtbert_ray.tools.device_check"]


def _without_ray(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_RAY + code], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})


def test_the_core_imports_without_ray():
    out = _without_ray("import importlib\n" + "\n".join(f"importlib.import_module({m!r})" for m in CORE)
                       + "\ntry:\n    import ray\nexcept ImportError:\n    print('no ray')\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no ray"


def test_device_check_passes_on_the_cpu_without_ray():
    out = _without_ray("import runpy, sys\nsys.argv = ['device_check', '--tiny', '--cpu']\n"
                       "runpy.run_module('mtbert_ray.device_check', run_name='__main__')")
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["failures"] == []
    for stage in ("cofinetune", "distill"):
        figures = report["stages"][stage]
        assert figures["fp32_examples_per_s"] > 0 and figures["bf16_loss_relative_to_fp32"] < 0.05
        assert figures["accumulation_relative_grad_diff"] < 1e-4 and figures["resume_max_param_diff"] <= 1e-6


def test_device_check_fails_loudly(monkeypatch, capsys):
    """A check that does not hold is a failure line and exit status 1 (here: a bf16 tolerance of 0)."""
    import pytest

    from mtbert_ray.cli.device_check import main
    from mtbert_ray.tools import device_check

    monkeypatch.setattr(device_check, "TOLERANCE", {"bf16": 0.0})
    with pytest.raises(SystemExit) as exited:
        main(["--tiny", "--cpu", "--precisions", "bf16"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exited.value.code == 1 and not report["ok"]
    assert any("bf16: loss" in line and "vs fp32" in line for line in report["failures"])
