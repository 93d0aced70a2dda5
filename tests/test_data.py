"""The data layer: sources in their real formats, tokenized shards and their reuse, bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mtbert_ray.common.errors import DataError
from mtbert_ray.common.metric_names import NO_LABEL, UNLABELED
from mtbert_ray.config import DataConfig
from mtbert_ray.data import shards as shards_module
from mtbert_ray.data.shards import prepare_data
from mtbert_ray.data.sources import UNLABELED_ID_BASE, load_source, load_unlabeled
from mtbert_ray.store.stage import read_stage
from tests import data_fixtures as fx
from tests.conftest import MINILM_L3, MINILM_L6, REPO


def _files(path, **kw):
    return DataConfig(source="files", path=str(path), text_fields=kw.pop("text_fields", ["text"]), **kw)


def test_rt_polarity_rows_and_labels(rt_polarity):
    raw = load_source(DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"]))
    assert {s: len(v.frame) for s, v in raw.splits.items()} == {"train": 11059, "validation": 802, "test": 891}
    assert raw.label_names == ["0", "1"] and not raw.pair
    val = raw.splits["validation"].frame
    assert val["label"].value_counts().to_dict() == {1: 453, 0: 349}
    source = pd.read_parquet(rt_polarity / "validation.parquet")
    assert val["text_a"].tolist() == source["sentence"].tolist()
    assert val["label"].tolist() == source["label"].tolist()


def test_limit_is_a_seeded_subsample(rt_polarity):
    cfg = DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"], limit_train=100, limit_eval=50, seed=3)
    a, b = load_source(cfg), load_source(cfg)
    assert len(a.splits["train"].frame) == 100 and len(a.splits["validation"].frame) == 50
    assert a.splits["train"].frame["example_id"].tolist() == b.splits["train"].frame["example_id"].tolist()
    other = load_source(cfg.model_copy(update={"seed": 4}))
    assert a.splits["train"].frame["example_id"].tolist() != other.splits["train"].frame["example_id"].tolist()


def test_glue_sst2_tsv(tmp_path):
    folder = fx.write_sst2_tsv(tmp_path / "SST-2")
    raw = load_source(DataConfig(source="glue", task="sst2", path=str(tmp_path)))  # finds the SST-2 subfolder
    assert raw.label_names == ["negative", "positive"]
    assert len(raw.splits["train"].frame) == 12 and len(raw.splits["validation"].frame) == 6
    test = raw.splits["test"]  # hidden GLUE test labels: kept unlabelled, for the benchmark's submission file
    assert not test.labelled and (test.frame["label"] == -1).all() and len(test.frame) == 4
    assert raw.metrics == ("accuracy",) and raw.submission_file == "SST-2.tsv" and raw.submission_labels == ("0", "1")
    assert raw.splits["train"].frame["label"].tolist() == [i % 2 for i in range(12)]
    assert folder.exists()


def test_glue_rte_tsv_string_labels_and_pairs(tmp_path):
    fx.write_rte_tsv(tmp_path)
    raw = load_source(DataConfig(source="glue", task="rte", path=str(tmp_path)))
    assert raw.pair and raw.label_names == ["entailment", "not_entailment"]
    train = raw.splits["train"].frame
    assert train["label"].tolist() == [i % 2 for i in range(10)]
    assert train["text_b"].iloc[0] == "The film won awards."


def test_glue_hub_parquet_layout(tmp_path):
    fx.write_glue_hub_parquet(tmp_path, "rte")
    raw = load_source(DataConfig(source="glue", task="rte", path=str(tmp_path)))
    assert raw.pair and len(raw.splits["train"].frame) == 8 and not raw.splits["test"].labelled


def test_mind_topics_from_training_split(tmp_path):
    fx.write_mind(tmp_path)
    raw = load_source(DataConfig(source="mind", path=str(tmp_path)))
    assert raw.label_names == ["finance", "news", "sports"]
    dev = raw.splits["validation"].frame
    assert len(dev) == 2, "N2 is in train too: kept only there"
    assert dev["label"].tolist() == [2, 0] and dev["text_a"].iloc[0].startswith("Headline about golf")
    both = load_source(DataConfig(source="mind", path=str(tmp_path), mind_text="title_abstract"))
    assert both.splits["train"].frame["text_a"].iloc[0] == "Headline about soccer number 1 An abstract on soccer."


def test_mind_unseen_category_error_or_drop(tmp_path):
    fx.write_mind(tmp_path, dev_rows=[("N9", "kids", "Games"), ("N7", "sports", "Golf")])
    with pytest.raises(DataError, match=r"MINDsmall_dev/news.tsv row 1, column 'Category': label 'kids' is never seen in training"):
        load_source(DataConfig(source="mind", path=str(tmp_path)))
    raw = load_source(DataConfig(source="mind", path=str(tmp_path), unseen_labels="drop"))
    assert len(raw.splits["validation"].frame) == 1 and raw.notes


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_files_formats_and_string_labels(tmp_path, fmt):
    fx.write_files(tmp_path, fmt, string_labels=True)
    raw = load_source(_files(tmp_path))
    assert raw.label_names == ["neg", "pos"]
    assert raw.splits["train"].frame["label"].tolist() == [i % 2 for i in range(12)]
    assert len(raw.splits["test"].frame) == 4


def test_pairs_are_encoded_as_pairs(tmp_path, tiny_models):
    fx.write_files(tmp_path / "d", "csv", pair=True)
    cfg = _files(tmp_path / "d", text_fields=["text", "hypothesis"], cache_dir=str(tmp_path / "cache"), max_length=32)
    prepared = prepare_data(cfg, [MINILM_L6, tiny_models["roberta"]])
    table = pq.read_table(prepared.splits["train"])
    bert = prepared.model_tokenization[MINILM_L6]
    roberta = prepared.model_tokenization[tiny_models["roberta"]]
    assert bert != roberta and len(prepared.tokenizations) == 2
    ids = table[f"{bert}.input_ids"][0].as_py()
    assert ids.count(102) == 2, "[CLS] a [SEP] b [SEP]"
    assert 1 in table[f"{bert}.token_type_ids"][0].as_py()
    assert f"{roberta}.token_type_ids" not in table.column_names  # RoBERTa does not use them
    specials = table[f"{roberta}.special_tokens_mask"][0].as_py()
    assert sum(specials) == 4, "<s> a </s></s> b </s>"
    assert sorted(table["example_id"].to_pylist()) == list(range(12))
    assert table["example_id"].to_pylist() != list(range(12)), "the view stores its rows in a seeded random order"


def test_shards_are_reused_not_retokenized(tmp_path, rt_polarity, monkeypatch):
    cfg = DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"], limit_train=64, limit_eval=32,
                     max_length=32, cache_dir=str(tmp_path))
    first = prepare_data(cfg, [MINILM_L6, MINILM_L3])
    assert len(first.tokenizations) == 1, "the two MiniLMs share one tokenizer: tokenized once"
    assert first.summary["tokenizers"][next(iter(first.tokenizations))]["train"]["rows"] == 64

    def boom(*a, **k):
        raise AssertionError("re-tokenized a cached dataset")

    monkeypatch.setattr(shards_module, "encode_arrow", boom)
    second = prepare_data(cfg, [MINILM_L6, MINILM_L3])
    assert second.view_dir == first.view_dir and second.splits == first.splits
    # A different max_length is a different key: it must tokenize again.
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_data(cfg.model_copy(update={"max_length": 16}), [MINILM_L6])


def test_altered_shard_is_detected_and_rebuilt(tmp_path, rt_polarity):
    cfg = DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"], limit_train=64, limit_eval=32,
                     max_length=32, cache_dir=str(tmp_path))
    first = prepare_data(cfg, [MINILM_L6])
    shard = read_stage(next((tmp_path / "shards").iterdir()))
    part = shard.path / "train" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # truncated
    view_part = Path(first.splits["train"][0])
    view_part.write_bytes(view_part.read_bytes().replace(b"PAR1", b"PAR2", 1))  # altered
    second = prepare_data(cfg, [MINILM_L6])
    assert pq.read_table(second.splits["train"]).num_rows == 64
    rebuilt = read_stage(next((tmp_path / "shards").iterdir()))
    assert pq.read_table(rebuilt.path / "train" / "part-00000.parquet").num_rows == 64


def test_token_stats_and_truncation(tmp_path, rt_polarity):
    cfg = DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"], limit_train=200, limit_eval=50,
                     max_length=16, cache_dir=str(tmp_path))
    prepared = prepare_data(cfg, [MINILM_L6])
    stats = next(iter(prepared.summary["tokenizers"].values()))["train"]
    assert stats["truncation_rate"] > 0.5 and stats["length_max"] > 16
    lengths = [len(x) for x in pq.read_table(prepared.splits["train"])[f"{next(iter(prepared.tokenizations))}.input_ids"].to_pylist()]
    assert max(lengths) == 16


# ---- bad input: one line naming the file, row and column ------------------------------------------

def _bad(tmp_path, name, frame_or_text, split="train", fmt="csv"):
    folder = fx.write_files(tmp_path / name, "csv")
    target = folder / f"{split}.{fmt}"
    if fmt != "csv":
        (folder / f"{split}.csv").unlink()
    if isinstance(frame_or_text, bytes):
        target.write_bytes(frame_or_text)
    elif isinstance(frame_or_text, str):
        target.write_text(frame_or_text)
    else:
        frame_or_text.to_parquet(target) if fmt == "parquet" else frame_or_text.to_csv(target, index=False)
    return folder


BAD_CASES = {
    "missing split": (lambda p: (fx.write_files(p, "csv"), (p / "validation.csv").unlink(), p)[-1], {},
                      r"no validation file \(expected validation"),
    "missing column": (lambda p: fx.write_files(p, "csv"), {"text_fields": ["sentence"]},
                       r"train.csv: no column 'sentence' \(data.text_fields\)"),
    "pair asked of one-field set": (lambda p: fx.write_files(p, "csv"), {"text_fields": ["text", "hypothesis"]},
                                    r"train.csv: no column 'hypothesis' \(data.text_fields asks for a sentence pair\)"),
    "missing label column": (lambda p: fx.write_files(p, "csv"), {"label_field": "y"}, r"train.csv: no column 'y' \(data.label_field\)"),
    "empty text": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\n  ,0\n"), {},
                   r"train.csv row 2, column 'text': empty text"),
    "null text": (lambda p: _bad(p.parent, p.name, pd.DataFrame({"text": ["ok", None], "label": [0, 1]}), fmt="parquet"), {},
                  r"train.parquet row 2, column 'text': missing text \(null\)"),
    "null label": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\nbad film,\n"), {},
                   r"train.csv row 2, column 'label': missing label"),
    "the word None among class ids": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\nbad film,None\nok film,0\n"), {},
                                      r"train.csv row 2, column 'label': missing label \('None'\) in a column of class ids; "
                                      r"label every row, or set data.missing_labels: unlabeled"),
    "a name among class ids": (lambda p: _bad(p.parent, p.name, "text,label\ngood,1\nbad,0\nok,0\nmeh,pos\n"), {},
                               r"train.csv row 4, column 'label': label 'pos' is not like the others — 3 of the 4 training "
                               r"labels are integer class ids, 1 are not"),
    "NaN in validation ids": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\nbad film,NaN\n", split="validation"), {},
                              r"validation.csv row 2, column 'label': missing label \('NaN'\); every validation and test row"),
    "unseen validation label": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\nbad film,2\n", split="validation"), {},
                                r"validation.csv row 2, column 'label': label '2' is never seen in training"),
    "label out of num_labels": (lambda p: _bad(p.parent, p.name, "text,label\ngood film,1\nbad film,0\n", split="validation"),
                                {"num_labels": 3}, r"data.num_labels=3 disagrees with .*train.csv"),
    "unreadable encoding": (lambda p: _bad(p.parent, p.name, "text,label\ncaf\xe9,1\n".encode("latin-1")), {},
                            r"train.csv: not valid UTF-8 \(byte 0xe9 at offset 14\)"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_gives_one_clear_line(tmp_path, case):
    make, extra, pattern = BAD_CASES[case]
    folder = make(tmp_path / "data")
    cfg = _files(folder, cache_dir=str(tmp_path / "cache"), **extra)
    with pytest.raises(DataError, match=pattern) as info:
        prepare_data(cfg, [MINILM_L6])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "shards").exists(), "nothing is written for bad input"


def test_training_rows_without_a_label_can_be_transfer_text(tmp_path):
    """``data.missing_labels: unlabeled``: rows with no label (empty, or None / NaN among class ids) leave the training
    split and become the unlabelled split (ids from UNLABELED_ID_BASE, label −1), before data.unlabeled's own rows."""
    folder = fx.write_files(tmp_path / "d", "csv")
    (folder / "train.csv").write_text("text,label\ngood film,1\nsome film,\nbad film,0\nodd film,None\nfine film,1\n")
    (tmp_path / "more.txt").write_text("another film\n")
    raw = load_source(_files(folder, missing_labels="unlabeled", unlabeled=str(tmp_path / "more.txt")))
    assert raw.splits["train"].frame["text_a"].tolist() == ["good film", "bad film", "fine film"]
    transfer = raw.splits[UNLABELED].frame
    assert transfer["text_a"].tolist() == ["some film", "odd film", "another film"]
    assert transfer["example_id"].tolist() == [UNLABELED_ID_BASE + i for i in range(3)]
    assert transfer["label"].tolist() == [NO_LABEL] * 3 and raw.label_names == ["0", "1"]
    assert raw.unlabeled_fingerprint != load_source(_files(folder, missing_labels="unlabeled")).unlabeled_fingerprint
    with pytest.raises(DataError, match=r"train.csv row 2, column 'label': missing label; data.missing_labels: unlabeled"):
        load_source(_files(folder))


def test_out_of_range_label_with_num_labels(tmp_path):
    folder = fx.write_files(tmp_path / "d", "csv")
    (folder / "validation.csv").write_text("text,label\ngood film,1\nbad film,4\n")
    with pytest.raises(DataError, match=r"validation.csv row 2, column 'label': label '4' is out of range for data.num_labels=2"):
        load_source(_files(folder, num_labels=2))


def test_cli_prepare_summary_and_exit_status(tmp_path, rt_polarity):
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"teachers: [{MINILM_L6}]\nstudent: {{init_from: {MINILM_L6}, num_layers: 2}}\n"
        f"data: {{source: files, path: {rt_polarity}, text_fields: [sentence], limit_train: 100, limit_eval: 40,"
        f" max_length: 32, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "mtbert_ray.data", "prepare", "--config", str(config), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "train           100 rows" in ok.stdout and "truncated" in ok.stdout and "p90" in ok.stdout
    bad = run("--set", "data.text_fields=[review]")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # exactly one line
    assert "no column 'review'" in bad.stderr and "Traceback" not in bad.stderr


# ---- data.unlabeled: transfer text ---------------------------------------------------------------

def _unlabeled(path, **kw) -> DataConfig:
    return DataConfig(source="files", path="unused", text_fields=kw.pop("text_fields", ["text"]), unlabeled=str(path), **kw)


def test_unlabeled_text_file_lines_ids_and_labels(tmp_path):
    (tmp_path / "transfer.txt").write_text("\ufeffa quiet film\r\n\n  \nloud and long\r\nthe end", encoding="utf-8")
    split, fingerprint = load_unlabeled(_unlabeled(tmp_path / "transfer.txt"), ["text"])
    frame = split.frame
    assert frame["text_a"].tolist() == ["a quiet film", "loud and long", "the end"]  # BOM, \r and blank lines gone
    assert frame["example_id"].tolist() == [UNLABELED_ID_BASE + i for i in range(3)]
    assert frame["label"].tolist() == [NO_LABEL] * 3 and frame["label"].dtype == "int64" and not split.labelled
    assert isinstance(frame["text_a"].dtype, pd.ArrowDtype)  # texts stay in Arrow, not one Python object a row
    assert fingerprint == load_unlabeled(_unlabeled(tmp_path / "transfer.txt"), ["text"])[1]


def test_unlabeled_folder_of_tables_in_name_order_with_pairs_and_limit(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    pd.DataFrame({"a": ["one", "two"], "b": ["uno", "dos"]}).to_parquet(folder / "1.parquet")
    (folder / "2.jsonl").write_text('{"a": "three", "b": "tres"}\n')
    (folder / "3.csv").write_text("a,b\nfour,cuatro\n")
    (folder / "notes.md").write_text("ignored: not a data file")
    split, _ = load_unlabeled(_unlabeled(folder, text_fields=["a", "b"]), ["a", "b"])
    assert split.frame["text_a"].tolist() == ["one", "two", "three", "four"]
    assert split.frame["text_b"].tolist() == ["uno", "dos", "tres", "cuatro"]
    limited, key = load_unlabeled(_unlabeled(folder, text_fields=["a", "b"], limit_unlabeled=2, seed=5), ["a", "b"])
    again, same = load_unlabeled(_unlabeled(folder, text_fields=["a", "b"], limit_unlabeled=2, seed=5), ["a", "b"])
    assert len(limited.frame) == 2 and limited.frame.equals(again.frame) and key == same
    assert set(limited.frame["text_a"]) <= {"one", "two", "three", "four"}
    assert limited.frame["example_id"].is_monotonic_increasing  # a sample keeps the files' order


@pytest.mark.parametrize("content, pattern", [
    (pd.DataFrame({"text": ["fine", None]}), r"t.parquet row 2, column 'text': missing text \(null\)"),
    (pd.DataFrame({"text": ["fine", " \t"]}), r"t.parquet row 2, column 'text': empty text"),
    (pd.DataFrame({"text": [1.5, 2.5]}), r"t.parquet row 1, column 'text': expected text, got float 1.5"),
    (pd.DataFrame({"text": ["fine", 7]}, dtype=object), r"t.parquet row 2, column 'text': expected text, got int 7"),
    (pd.DataFrame({"text": [None, None]}, dtype=object), r"t.parquet row 1, column 'text': missing text \(null\)"),
])
def test_unlabeled_bad_rows_name_file_row_and_column(tmp_path, content, pattern):
    path = tmp_path / "t.parquet"
    try:
        content.to_parquet(path)
    except Exception:  # a column Parquet cannot hold (mixed types): the same data as JSON Lines
        path = tmp_path / "t.jsonl"
        content.to_json(path, orient="records", lines=True)
        pattern = pattern.replace("t.parquet", "t.jsonl")
    with pytest.raises(DataError, match=pattern) as info:
        load_unlabeled(_unlabeled(path), ["text"])
    assert "\n" not in str(info.value)


def test_dry_run_data_shape_counts_and_samples_both_kinds_of_rows(tmp_path, rt_polarity, tiny_models):
    """The dry run's (labelled rows, unlabelled rows, mean tokens) with transfer text: both kinds counted, the token
    sample drawn from both (the unlabelled texts, in Arrow, concatenated with the labelled ones)."""
    from mtbert_ray.config import validate_config
    from mtbert_ray.study.dryrun import _data_shape

    (tmp_path / "transfer.txt").write_text("\n".join(["word " * 40] * 300))  # long: they lift the mean
    data = {"source": "files", "path": str(rt_polarity), "text_fields": ["sentence"], "limit_train": 100, "max_length": 32}
    config = {"name": "shape", "teachers": [tiny_models["bert"]], "student": {"init_from": tiny_models["bert"], "num_layers": 1}}
    alone = _data_shape(validate_config({**config, "data": data}))
    both = _data_shape(validate_config({**config, "data": {**data, "unlabeled": str(tmp_path / "transfer.txt")}}))
    assert alone[:2] == (100, 0) and both[:2] == (100, 300)
    assert alone[2] < both[2] <= 32, "the sample takes the long unlabelled rows too"


def test_unlabeled_parquet_reads_only_its_text_columns_and_names_a_missing_or_damaged_file(tmp_path):
    pd.DataFrame({"text": ["a film", "a play"], "extra": [[1, 2], [3]]}).to_parquet(tmp_path / "t.parquet")
    split, _ = load_unlabeled(_unlabeled(tmp_path / "t.parquet"), ["text"])
    assert split.frame["text_a"].tolist() == ["a film", "a play"] and list(split.frame.columns) == ["example_id", "text_a", "label"]
    with pytest.raises(DataError, match=r"t.parquet: no column 'sentence' \(data.text_fields\); columns are \['text', 'extra'\]"):
        load_unlabeled(_unlabeled(tmp_path / "t.parquet", text_fields=["sentence"]), ["sentence"])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad.parquet: cannot parse it as parquet \(") as info:
        load_unlabeled(_unlabeled(tmp_path / "bad.parquet"), ["text"])
    assert "\n" not in str(info.value)


# ---- data.augment: transfer-set augmentation ------------------------------------------------------------------------

def test_augmentation_is_seeded_deduplicated_and_kept_out_of_the_labelled_data():
    from mtbert_ray.data.augment import generate, normalized

    texts = ["a gorgeous witty seductive movie", "the acting is terrible and far too long", "one of the best films of the year"]
    cfg = DataConfig(source="files", path="x", text_fields=["t"], augment={"copies": 8, "seed": 3})
    exclude = {normalized(t) for t in texts} | {normalized("the acting")}
    first = generate(texts, cfg, exclude)
    assert first == generate(texts, cfg, exclude), "the same seed makes the same sentences"
    assert first != generate(texts, cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"seed": 4})}), exclude)
    assert len({normalized(t) for t in first}) == len(first), "no duplicates"
    assert not {normalized(t) for t in first} & exclude, "no labelled sentence (nor an excluded one) comes back"
    assert 0 < len(first) <= 8 * len(texts)
    vocabulary = {w for t in texts for w in t.split()}
    assert all(set(t.split()) <= vocabulary for t in first), "unigram replacement draws from the training text"
    short = generate(texts, cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"ngram": 1.0, "word_dropout": 0.0,
                                                                                              "replace": 0.0})}), set())
    assert all(1 <= len(t.split()) <= 5 for t in short), "n-gram sampling keeps a window of 1–5 words"


def test_augmented_text_is_a_stage_of_its_own_and_joins_the_unlabelled_split(tmp_path, rt_polarity, monkeypatch):
    """Built once per key and reused; the labelled data's key (and so co-finetuning's) does not change, the unlabelled
    split's does; the rows carry ids after data.unlabeled's and no label; other settings make another stage."""
    from mtbert_ray.data import augment as augment_module

    (tmp_path / "more.txt").write_text("a quiet film about nothing much\nloud and long\n")
    cfg = DataConfig(source="files", path=str(rt_polarity), text_fields=["sentence"], limit_train=200, limit_eval=50,
                     max_length=32, cache_dir=str(tmp_path / "cache"), unlabeled=str(tmp_path / "more.txt"),
                     augment={"copies": 2})
    plain = prepare_data(cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"copies": 0})}), [MINILM_L6])
    first = prepare_data(cfg, [MINILM_L6])
    assert first.dataset_key == plain.dataset_key, "augmentation never changes the labelled data's key"
    assert first.unlabeled_key != plain.unlabeled_key
    assert plain.rows["unlabeled"] == 2 and 2 < first.rows["unlabeled"] <= 2 + 2 * (200 + 2)
    frame = pq.read_table(first.splits["unlabeled"]).to_pandas()
    assert (frame["label"] == NO_LABEL).all() and frame["example_id"].min() >= UNLABELED_ID_BASE
    calls = []
    monkeypatch.setattr(augment_module, "generate", lambda *a: calls.append(1) or [])
    again = prepare_data(cfg, [MINILM_L6])
    assert not calls and again.unlabeled_key == first.unlabeled_key, "the published augmentation is reused"
    other = prepare_data(cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"seed": 1})}), [MINILM_L6])
    assert calls and other.unlabeled_key != first.unlabeled_key
    assert len(list((tmp_path / "cache" / "augment").iterdir())) == 2


def test_the_dry_run_knows_the_augmented_texts_key_without_making_it(tmp_path, rt_polarity):
    from mtbert_ray.config import validate_config
    from mtbert_ray.study.dryrun import _Facts

    raw = {"teachers": [MINILM_L6], "student": {"init_from": MINILM_L6, "num_layers": 1},
           "data": {"source": "files", "path": str(rt_polarity), "text_fields": ["sentence"], "limit_train": 100,
                    "limit_eval": 50, "max_length": 32, "cache_dir": str(tmp_path / "cache"), "augment": {"copies": 1}}}
    cfg = validate_config(raw)
    facts = _Facts().of(cfg)
    prepared = prepare_data(cfg.data, [MINILM_L6])
    assert facts.unlabeled_key == prepared.unlabeled_key and "unlabeled" in facts.splits
    assert facts.dataset_key == prepared.dataset_key
