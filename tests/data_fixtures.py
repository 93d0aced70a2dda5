"""Small datasets written in the real formats: GLUE TSV (SST-2, RTE), GLUE hub parquet, MIND news.tsv, files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

POS = ["a gorgeous, witty, seductive movie.", "charming and heartfelt, a real pleasure.", "one of the best films of the year."]
NEG = ["boring, predictable and far too long.", "unwatchable nonsense from start to finish.", "the acting is terrible."]


def write_sst2_tsv(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(POS[i % 3] if i % 2 else NEG[i % 3], i % 2) for i in range(n)]
    lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    (folder / "dev.tsv").write_text("\n".join(lines[: 1 + n // 2]) + "\n")
    (folder / "test.tsv").write_text("index\tsentence\n" + "\n".join(f"{i}\t{s}" for i, (s, _) in enumerate(rows[:4])) + "\n")
    return folder


def write_rte_tsv(folder: Path, n: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    def rows(k):
        out = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(k):
            label = "entailment" if i % 2 == 0 else "not_entailment"
            out.append(f"{i}\tThe film won three awards in {2000 + i}.\tThe film won awards.\t{label}")
        return "\n".join(out) + "\n"
    (folder / "train.tsv").write_text(rows(n))
    (folder / "dev.tsv").write_text(rows(4))
    (folder / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tA cat sat.\tAn animal sat.\n")
    return folder


def write_glue_hub_parquet(folder: Path, task: str = "rte") -> Path:
    """The layout of a local copy of the nyu-mll/glue dataset repository."""
    sub = folder / task
    sub.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({
        "sentence1": [f"The film won {i} awards." for i in range(8)],
        "sentence2": ["The film won awards."] * 8,
        "label": [0, 1] * 4,
        "idx": list(range(8)),
    })
    frame.to_parquet(sub / "train-00000-of-00001.parquet")
    frame.head(4).to_parquet(sub / "validation-00000-of-00001.parquet")
    frame.head(3).assign(label=-1).to_parquet(sub / "test-00000-of-00001.parquet")
    return folder


MIND_ROWS = {
    "train": [("N1", "sports", "Soccer"), ("N2", "news", "World"), ("N3", "finance", "Markets"),
              ("N4", "sports", "Tennis"), ("N5", "news", "Politics"), ("N6", "finance", "Banks")],
    "dev": [("N2", "news", "World"), ("N7", "sports", "Golf"), ("N8", "finance", "Stocks")],
}


def write_mind(folder: Path, size: str = "small", dev_rows=None) -> Path:
    for split, rows in (("train", MIND_ROWS["train"]), ("dev", dev_rows or MIND_ROWS["dev"])):
        sub = folder / f"MIND{size}_{split}"
        sub.mkdir(parents=True, exist_ok=True)
        lines = [
            f"{nid}\t{cat}\t{sub_cat}\tHeadline about {sub_cat.lower()} number {nid[1:]}\t"
            f"An abstract on {sub_cat.lower()}.\thttps://assets.msn.com/{nid}.html\t[]\t[]"
            for nid, cat, sub_cat in rows
        ]
        (sub / "news.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_files(folder: Path, fmt: str = "csv", pair: bool = False, string_labels: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("validation", 6), ("test", 4)):
        frame = pd.DataFrame({
            "text": [POS[i % 3] if i % 2 else NEG[i % 3] for i in range(n)],
            "label": [("pos" if i % 2 else "neg") if string_labels else i % 2 for i in range(n)],
        })
        if pair:
            frame["hypothesis"] = ["it is about a film"] * n
        if fmt == "parquet":
            frame.to_parquet(folder / f"{split}.parquet")
        elif fmt == "csv":
            frame.to_csv(folder / f"{split}.csv", index=False)
        elif fmt == "tsv":
            frame.to_csv(folder / f"{split}.tsv", sep="\t", index=False)
        elif fmt == "jsonl":
            frame.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    return folder
