"""rt_polarity re-split by film for the teacher-mixture study: labelled train, validation, a larger test, unlabelled text.

The vendored splits (``data/rt_polarity``: train 11,059 / validation 802 / test 891 sentences, split by movie) leave a
test set whose accuracy has a standard error of ~1.3 points. This script keeps validation as it is and moves whole films
of the training split (in a seeded random order of films) to the test split until it holds ``--test-rows`` sentences, then
to a labelled training split until it holds ``--train-rows``; the remaining films' sentences become unlabelled transfer
text (their labels dropped). No film is in two parts. Output::

    OUT/labelled/train.parquet, validation.parquet, test.parquet   (sentence, label, movie, idx)
    OUT/unlabeled.parquet                                          (sentence, movie)
    OUT/README.md                                                  (what it is, the counts, the licence note)

``python benchmarks/resplit_rt_polarity.py OUT [--seed 0]``; prints the row counts.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data" / "rt_polarity"


def film_order(movies: list[str], seed: int) -> list[str]:
    """Films in a seeded order that does not depend on the order they appear in (sha256 of seed + name)."""
    return sorted(set(movies), key=lambda m: hashlib.sha256(f"{seed}:{m}".encode()).hexdigest())


def resplit(source: Path, out: Path, train_rows: int, test_rows: int, seed: int) -> dict[str, int]:
    train = pd.read_parquet(source / "train.parquet")
    validation = pd.read_parquet(source / "validation.parquet")
    test = pd.read_parquet(source / "test.parquet")
    parts: dict[str, list[str]] = {"test": [], "train": [], "unlabeled": []}
    counts = train.groupby("movie").size()
    have = {"test": len(test), "train": 0}
    for movie in film_order(train["movie"].tolist(), seed):
        part = "test" if have["test"] < test_rows else "train" if have["train"] < train_rows else "unlabeled"
        parts[part].append(movie)
        if part in have:
            have[part] += int(counts[movie])
    (out / "labelled").mkdir(parents=True, exist_ok=True)
    labelled_train = train[train["movie"].isin(parts["train"])]
    new_test = pd.concat([test, train[train["movie"].isin(parts["test"])]], ignore_index=True)
    unlabeled = train[train["movie"].isin(parts["unlabeled"])][["sentence", "movie"]]
    labelled_train.to_parquet(out / "labelled" / "train.parquet", index=False)
    validation.to_parquet(out / "labelled" / "validation.parquet", index=False)
    new_test.to_parquet(out / "labelled" / "test.parquet", index=False)
    unlabeled.to_parquet(out / "unlabeled.parquet", index=False)
    rows = {"train": len(labelled_train), "validation": len(validation), "test": len(new_test), "unlabeled": len(unlabeled)}
    note = (source / "README.md").read_text() if (source / "README.md").is_file() else ""
    (out / "README.md").write_text(
        f"# rt_polarity re-split by film (benchmarks/resplit_rt_polarity.py, seed {seed})\n\n"
        f"Rows: {rows}. Validation is the vendored one; test = the vendored test split + whole films of the vendored "
        "training split; the unlabelled text is the remaining films' sentences without their labels.\n\n"
        "## The source's note\n\n" + note)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--test-rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = resplit(args.source, args.out, args.train_rows, args.test_rows, args.seed)
    print(" ".join(f"{k}={v}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
