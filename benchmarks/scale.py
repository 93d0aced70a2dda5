"""MIND-size data on 2 workers: per-row time and peak memory at 10k vs 100k rows, and data preparation speed.

A synthetic MIND-shaped dataset (18 topics, title-length texts cut deterministically from the vendored
Rotten Tomatoes sentences; a files source) goes through ``data prepare``, co-finetuning (1 epoch),
the teacher cache with hidden states and one distillation epoch, with the tests' tiny random encoders
(a 2-layer BERT and a 2-layer RoBERTa of other tokenizers and widths), 2 data-parallel workers, so the
whole benchmark takes minutes on 2 cores. Each size runs in a fresh results folder.

Figures (each from one run, both sizes side by side):
- per-row time at 100k ÷ at 10k, per stage (target ≤ 1.2): stage wall seconds ÷ rows — the start-up of
  each stage counts against the 10k run, so the ratio shows whether anything grows faster than the rows;
- peak memory at 100k ÷ at 10k (target ≤ 1.3) of the driver and of the stage workers (Ray Train workers, the
  cache's Ray Data actors), sampled every 0.5 s with psutil: RSS, and USS (without the shared object store's
  pages, which RSS counts in every process that touched them);
- ``data prepare`` rows/s ÷ the tokenizer's own batch-encode rows/s on the same texts (target ≥ 0.5),
  for each tokenizer of the experiment.

Last line: ``scale_per_row_ratio_max=<worst stage ratio> peak_rss_ratio_max=<worst process> peak_uss_ratio_max=<worst
process> prepare_vs_tokenizer=<ratio>``.

``--unlabeled --sizes 100000 1000000`` scales the unlabelled transfer text instead (``data.unlabeled``, beside
``--labelled`` 10,000 labelled rows): the teacher cache and distillation stream both kinds of rows, so their per-row
time and every process's peak memory should stay flat as the unlabelled rows grow. Last line:
``unlabeled_per_row_ratio_max=<cache / distill> peak_rss_ratio_max=… peak_uss_ratio_max=…``.
"""
from __future__ import annotations

import argparse
import shutil
import threading
import time
import zlib
from pathlib import Path

from _common import DATA, REPO, header, storage, timed

TOPICS = 18
STAGES = ("prepare", "cofinetune", "cache", "distill")
LABELS = ["autos", "entertainment", "finance", "foodanddrink", "health", "kids", "lifestyle", "middleeast", "movies",
          "music", "news", "northamerica", "sports", "travel", "tv", "video", "weather", "games"]


def synthetic_mind(folder: Path, train_rows: int, eval_rows: int = 5000, unlabeled_rows: int = 0) -> Path:
    """Title-length texts (6–14 words) cut from the vendored sentences; topic = a hash of the text (deterministic)."""
    import pandas as pd

    sentences = pd.read_parquet(DATA / "train.parquet")["sentence"].tolist()
    words = [s.split() for s in sentences]

    def rows(n: int, offset: int) -> pd.DataFrame:
        texts, labels = [], []
        for i in range(n):
            source = words[(i * 7919 + offset) % len(words)]
            length = 6 + (i * 31 + offset) % 9
            start = (i * 13) % max(1, len(source) - length + 1)
            text = " ".join(source[start:start + length]) or "untitled"
            texts.append(text)
            labels.append(LABELS[zlib.crc32(text.encode()) % TOPICS])
        return pd.DataFrame({"Title": texts, "Category": labels})

    folder.mkdir(parents=True, exist_ok=True)
    rows(train_rows, 0).to_parquet(folder / "train.parquet")
    rows(eval_rows, 10_000_019).to_parquet(folder / "validation.parquet")
    rows(eval_rows, 20_000_033).to_parquet(folder / "test.parquet")
    if unlabeled_rows:  # transfer text: titles without their topic, beside the labelled splits
        rows(unlabeled_rows, 30_000_047)[["Title"]].to_parquet(folder.parent / "unlabeled.parquet")
    return folder


class MemorySampler:
    """Peak memory of this process and of Ray's stage workers (by process title), sampled in a thread: RSS
    (resident pages, those of the shared object store a process touched included) and USS (the pages only
    that process holds: its own memory, without the object store)."""

    KINDS = {"ray::RayTrainWorker": "train worker", "ray::MapWorker": "cache actor", "ray::_MapWorker": "cache actor"}

    def __init__(self, every_s: float = 0.5) -> None:
        import psutil

        self.psutil, self.every_s = psutil, every_s
        self.peaks: dict[str, float] = {}  # kind → peak RSS (MiB); "<kind> (USS)" → peak USS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = self.psutil.Process()
        while not self._stop.wait(self.every_s):
            self._note("driver", me)
            for proc in me.children(recursive=True):  # this driver's own Ray (not another one on the machine)
                try:
                    title = " ".join(proc.cmdline())[:40]
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    continue
                kind = next((k for prefix, k in self.KINDS.items() if title.startswith(prefix)), None)
                if kind:
                    self._note(kind, proc)

    def _note(self, kind: str, proc) -> None:
        try:
            info = proc.memory_full_info()
        except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
            return
        self.peaks[kind] = max(self.peaks.get(kind, 0.0), info.rss / 2**20)
        self.peaks[f"{kind} (USS)"] = max(self.peaks.get(f"{kind} (USS)", 0.0), info.uss / 2**20)


def run_size(rows: int, models: dict[str, str], root: Path, unlabeled: int = 0, labelled: int | None = None,
             stages: tuple[str, ...] = STAGES) -> dict:
    """Stage wall seconds and peak memory for one dataset size, in a fresh folder (run in a process of its own:
    ``--one``, so no size inherits the other's memory). ``unlabeled``: that many unlabelled rows (``data.unlabeled``)
    beside ``labelled`` training rows (default ``rows``); ``rows`` is then the size compared. ``stages``: the first
    stages only (``prepare cofinetune`` measures data preparation and what the driver keeps of it, in minutes)."""
    from mtbert_ray.config import validate_config
    from mtbert_ray.distributed.needs import trial_needs
    from mtbert_ray.distributed.runtime import init_ray
    from mtbert_ray.experiment.pipeline import Experiment

    folder = root / (f"unlabeled-{unlabeled}" if unlabeled else f"rows-{rows}")
    shutil.rmtree(folder, ignore_errors=True)
    data = synthetic_mind(folder / "data", labelled or rows, unlabeled_rows=unlabeled)
    config = validate_config({
        "name": f"scale-{rows}", "seed": 0,
        "teachers": [models["bert"], models["roberta"]],
        "student": {"init_from": models["bert"], "num_layers": 1, "query_dim": 16},
        "data": {"source": "files", "path": str(data), "text_fields": ["Title"], "label_field": "Category",
                 "max_length": 32, "cache_dir": str(folder / "data-cache"),
                 **({"unlabeled": str(folder / "unlabeled.parquet")} if unlabeled else {})},
        "cofinetune": {"epochs": 1, "lr": 1e-3, "head_lr": 1e-3, "batch_size": 64, "query_dim": 16},
        "distill": {"epochs": 1, "lr": 1e-3, "batch_size": 64},
        "cache": {"enabled": True, "hidden": True, "dtype": "float16"},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
    })
    exp = Experiment(config, storage=folder / "results")
    init_ray(required_cpus=trial_needs(config).peak["CPU"])  # not part of any stage's time; the cache pool's read CPU counted
    seconds, memory = {}, {}
    for stage, fn in (("prepare", exp.prepare), ("cofinetune", exp.cofinetune), ("cache", exp.teacher_cache),
                      ("distill", lambda: exp.distill(folder / "run"))):
        if stage not in stages:
            break
        with MemorySampler() as sampler:
            seconds[stage], _ = timed(fn)
        memory[stage] = dict(sampler.peaks)
        print(f"  {rows:,} rows · {stage}: {seconds[stage]:.1f} s ({1e6 * seconds[stage] / rows:.0f} µs/row); peak memory "
              + ", ".join(f"{k} {v:,.0f} MiB" for k, v in sorted(sampler.peaks.items())), flush=True)
    return {"rows": rows, "seconds": seconds, "memory": memory, "exp": exp, "data": data}


def run_in_own_process(rows: int, sizes: list[int], root: Path, unlabeled: bool = False, labelled: int = 10_000,
                       stages: tuple[str, ...] = STAGES) -> dict:
    """``run_size`` in a fresh Python process (its own driver and Ray); its figures as JSON. The child's stage lines
    are printed as they come (a 1M-row size runs for an hour or more), its stderr goes to ``<root>/<kind>-<rows>.log``
    and its figures to ``<root>/figures-<kind>-<rows>.json``, to be read again after the run."""
    import json
    import subprocess
    import sys

    extra = (["--unlabeled", "--labelled", str(labelled)] if unlabeled else []) + ["--stages", *stages]
    kind = f"unlabeled-beside-{labelled}" if unlabeled else "rows"
    log = root / f"{kind}-{rows}.log"  # the stages' own progress and warnings (stderr), to follow with tail -f
    with log.open("w") as stderr:
        child = subprocess.Popen([sys.executable, __file__, "--one", str(rows), "--sizes", *map(str, sizes), *extra],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines: list[str] = []
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("  "):
                print(lines[-1], flush=True)
        child.wait()
    figures = [line for line in lines if line.startswith("{")]
    if child.returncode != 0 or not figures:
        raise SystemExit(f"{rows:,} rows failed (log: {log}):\n" + "\n".join(lines)[-3000:] + "\n" + log.read_text()[-3000:])
    (root / f"figures-{kind}-{rows}.json").write_text(figures[-1] + "\n")
    return json.loads(figures[-1])


def tokenizer_ratio(run: dict) -> dict[str, float]:
    """``data prepare`` rows/s (reading and checking the source, every tokenization, the view, the manifests)
    ÷ the tokenizers' own batch-encode rows/s on the same texts, asked for what a shard stores (truncated to
    max_length, with offsets and special-token masks), in batches of 2,000."""
    import pandas as pd

    from mtbert_ray.models.hub import load_tokenizer

    exp = run["exp"]
    texts = []
    for split in ("train", "validation", "test"):
        texts += pd.read_parquet(run["data"] / f"{split}.parquet")["Title"].tolist()
    tokenizer_seconds = 0.0
    for spec in exp.ctx.data.tokenizations.values():
        tok = load_tokenizer(spec.name)
        started = time.perf_counter()
        for start in range(0, len(texts), 2000):
            tok(texts[start:start + 2000], truncation=True, max_length=exp.config.data.max_length,
                return_offsets_mapping=True, return_special_tokens_mask=True)
        tokenizer_seconds += time.perf_counter() - started
    return {"tokenizer_rows_per_s": len(texts) / tokenizer_seconds * len(exp.ctx.data.tokenizations),
            "prepare_rows_per_s": len(texts) / run["seconds"]["prepare"] * len(exp.ctx.data.tokenizations),
            "ratio": tokenizer_seconds / run["seconds"]["prepare"]}


def main() -> None:
    import json
    import sys

    sys.path.insert(0, str(REPO))
    from tests.tiny_models import make_tiny_bert, make_tiny_roberta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument("--unlabeled", action="store_true",
                        help="the sizes are unlabelled transfer-text rows (data.unlabeled) beside --labelled training rows")
    parser.add_argument("--labelled", type=int, default=10_000, help="labelled training rows with --unlabeled")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="run the stages up to the last one named (default: all four)")
    args = parser.parse_args()
    root = storage() / "scale"
    models = {"bert": root / "tiny-bert", "roberta": root / "tiny-roberta"}
    if args.one is not None:
        run = run_size(args.one, {k: str(v) for k, v in models.items()}, root,
                       unlabeled=args.one if args.unlabeled else 0, labelled=args.labelled if args.unlabeled else None,
                       stages=STAGES[:1 + max(STAGES.index(s) for s in args.stages)])
        figures = {"rows": run["rows"], "seconds": run["seconds"], "memory": run["memory"]}
        if args.one == max(args.sizes) and not args.unlabeled:
            figures["tokenizer"] = tokenizer_ratio(run)
        print(json.dumps(figures), flush=True)
        return
    what = f"unlabelled rows beside {args.labelled:,} labelled" if args.unlabeled else "rows"
    header(f"scale: MIND-shaped data at {args.sizes[0]:,} and {args.sizes[1]:,} {what}, 2 workers, tiny encoders")
    make_tiny_bert(models["bert"]), make_tiny_roberta(models["roberta"])
    stages = STAGES[:1 + max(STAGES.index(s) for s in args.stages)]
    small, large = (run_in_own_process(n, args.sizes, root, args.unlabeled, args.labelled, stages) for n in args.sizes)
    factor = large["rows"] / small["rows"]
    extra = args.labelled if args.unlabeled else 0  # rows the cache and distillation see: labelled + unlabelled
    per_row = {s: (large["seconds"][s] / (large["rows"] + extra)) / (small["seconds"][s] / (small["rows"] + extra))
               for s in small["seconds"]}
    memory = {}
    for stage in small["memory"]:
        for kind, peak in large["memory"][stage].items():
            if kind in small["memory"][stage]:
                memory[f"{stage}/{kind}"] = peak / small["memory"][stage][kind]
    print(f"rows ×{factor:.0f}: per-row time ratio " + ", ".join(f"{s} {r:.2f}" for s, r in per_row.items()))
    print("peak memory ratio " + ", ".join(f"{k} {r:.2f}" for k, r in memory.items()))
    rss = {k: v for k, v in memory.items() if "(USS)" not in k}
    uss = {k: v for k, v in memory.items() if "(USS)" in k}
    if args.unlabeled:  # stages 2 and 3 grow with the unlabelled rows (stage 1 trains on the labelled ones only)
        grown = {s: r for s, r in per_row.items() if s in ("cache", "distill")} or per_row  # with --stages: what ran
        print(f"unlabeled_per_row_ratio_max={max(grown.values()):.2f} peak_rss_ratio_max={max(rss.values()):.2f} "
              f"peak_uss_ratio_max={max(uss.values()):.2f}")
        return
    tokenizer = large["tokenizer"]
    print(f"data prepare {tokenizer['prepare_rows_per_s']:,.0f} rows/s vs the tokenizers' own batch encode "
          f"{tokenizer['tokenizer_rows_per_s']:,.0f} rows/s (per tokenization, {large['rows']:,} training rows + evaluation)")
    print(f"scale_per_row_ratio_max={max(per_row.values()):.2f} peak_rss_ratio_max={max(rss.values()):.2f} "
          f"peak_uss_ratio_max={max(uss.values()):.2f} prepare_vs_tokenizer={tokenizer['ratio']:.2f}")


if __name__ == "__main__":
    main()
