"""``python -m mtbert_ray.tools.node_check`` — run by the cluster files before ``ray start`` on every worker node.

A GPU node whose NVIDIA driver is missing or older than the CUDA runtime torch was built with still starts Ray, and
its stages would then fail (or, before, quietly run on the CPU). This check makes the node fail to start instead, with
one loud line in the autoscaler's log: GPUs the driver shows (``nvidia-smi -L``) but torch cannot use. A node without
``nvidia-smi`` is a CPU node: nothing to check.
"""
from __future__ import annotations

import shutil
import subprocess
import sys


def node_problem() -> str | None:
    """None when the node is fine; else what is wrong, in one line."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi does not run ({exc}): the NVIDIA driver is not working"
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        return f"nvidia-smi lists no GPU ({(listed.stderr or listed.stdout).strip()[:200]}): the NVIDIA driver is not working"
    import torch

    if not torch.cuda.is_available():
        return (f"the driver shows {len(gpus)} GPU(s) but torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) "
                "cannot use them: a CPU-only torch, or a driver older than that CUDA runtime")
    if torch.cuda.device_count() != len(gpus):
        return f"the driver shows {len(gpus)} GPU(s), torch sees {torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES?)"
    return None


def main() -> None:
    problem = node_problem()
    if problem:
        print(f"mtbert-ray node check FAILED: {problem}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("mtbert-ray node check: ok", flush=True)


if __name__ == "__main__":
    main()
