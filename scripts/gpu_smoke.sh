#!/usr/bin/env bash
# GPU smoke test for the first user with one CUDA GPU (not run in CI; CI checks its syntax and that the
# configs it uses validate: `scripts/gpu_smoke.sh --check`).
#
# Runs the paper's setting (tune_spaces/_paper_base.yaml: BERT-base, RoBERTa-base and ELECTRA-base
# teachers, 6-layer student, SST-2 from the hub) on ROWS training sentences in bf16, on Ray Train workers,
# with the distillation worker killed in its second epoch: Ray Train restarts it from the epoch-1
# checkpoint (max_failures=1). Then prints, per stage, throughput in examples/s and peak GPU memory, read
# from the stages' history and markers — the figures to report back.
#
#   scripts/gpu_smoke.sh                 # ROWS=2000 STORAGE=<temp folder> PYTHON=python by default
#   ROWS=8000 STORAGE=/mnt/scratch scripts/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ROWS=${ROWS:-2000}
CONFIG=tune_spaces/_paper_base.yaml
SETS=(--set "data.limit_train=${ROWS}" --set data.limit_eval=872 --set cofinetune.epochs=1 --set distill.epochs=2
      --set resources.precision=bf16 --set resources.execution=trainer --set max_failures=1 --set name=gpu_smoke)

if [[ "${1:-}" == "--check" ]]; then   # CI: the config and overrides validate (no GPU, no data needed)
  exec "$PYTHON" -c "import sys; from mtbert_ray.config import load_config; c = load_config(sys.argv[1], sys.argv[2:]); print('ok', c.name, c.resources.precision)" \
    "$CONFIG" $(printf '%s\n' "${SETS[@]}" | grep -v '^--set$')
fi

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this script is for a GPU machine')"
STORAGE=${STORAGE:-$(mktemp -d)}
FIRED="$STORAGE/fault-fired"
echo "results: $STORAGE"
# rank 0 of stage 3 exits at epoch 2, step 5, once (the marker file records it): a preempted node, in small
MTBERT_FAULT="distill:0:1:5:${FIRED}" "$PYTHON" -m mtbert_ray.run --config "$CONFIG" "${SETS[@]}" --storage "$STORAGE" | tee "$STORAGE/run.log"
RUN_DIR=$(tail -n 1 "$STORAGE/run.log")
test -f "$FIRED" || { echo "the fault did not fire" >&2; exit 1; }

# the throughput / memory table, and exit 1 on what matters: no resume after the fault, a non-finite loss, a student
# at chance, an epoch with no GPU memory (a worker on the CPU), no test score (mtbert_ray/tools/gpu_smoke.py)
exec "$PYTHON" -m mtbert_ray.tools.gpu_smoke "$RUN_DIR"
