"""Dataset sources → validated raw splits (text, optional second text, integer label, stable example id).

Sources (``data.source``):
- ``glue``: a GLUE task, from a local folder of the original TSVs (``train.tsv``, ``dev.tsv``, ``test.tsv``),
  from a local copy of the hub repository (``<task>/train-*.parquet``), or with ``datasets.load_dataset``
  (hub, or the local HF cache when offline). GLUE test labels are hidden: the test split is kept
  unlabelled (label ``NO_LABEL``, −1), and runs write the benchmark's submission file for it.
- ``mind``: a MIND folder with ``MIND{small,large}_{train,dev,test}/news.tsv``; topic = Category.
- ``files``: ``train`` / ``validation`` (or ``dev``) / ``test`` files in Parquet, CSV, TSV or JSON Lines
  (a test file without the label column is kept unlabelled, for predictions).

Every problem is a ``DataError`` naming the file, the row (1-based, header excluded) and the column.
"""
from __future__ import annotations

import csv
import io
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtbert_ray.common.errors import DataError
from mtbert_ray.common.hashing import file_sha256, stable_hash
from mtbert_ray.common.metric_names import NO_LABEL, UNLABELED
from mtbert_ray.config import DATA_SOURCES, DataConfig, declare_data_source
from mtbert_ray.data.glue_tasks import GLUE_FOLDERS, GLUE_TASKS, GlueTask

SPLITS = ("train", "validation", "test")
#: Example ids of unlabelled rows start here (row i → UNLABELED_ID_BASE + i), apart from every labelled split's ids.
UNLABELED_ID_BASE = 1 << 40
FILE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl")
TEXT_SUFFIX = ".txt"
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}
MIND_COLUMNS = ("NewsID", "Category", "SubCategory", "Title", "Abstract", "URL", "TitleEntities", "AbstractEntities")
_INT = re.compile(r"^[+-]?\d+$")
#: Texts that mean "no value" in a label column (pandas writes NaN / None / <NA> for a missing cell): a missing label.
MISSING_TOKENS = frozenset({"nan", "none", "null", "na", "n/a", "<na>"})


@dataclass
class RawSplit:
    """One split: ``frame`` has columns example_id (int64), text_a (str), [text_b (str),] label (int64;
    -1 throughout an unlabelled split)."""

    name: str
    origin: str
    frame: pd.DataFrame
    labelled: bool = True


@dataclass
class RawDataset:
    splits: dict[str, RawSplit]
    label_names: list[str]
    pair: bool
    fingerprint: str  # content hash of the source files (or hub dataset fingerprint) and loading options
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")  # reported metrics, main (default selection) metric first
    notes: list[str] = field(default_factory=list)
    unlabeled_fingerprint: str | None = None  # content hash of data.unlabeled's files and options (None: no such text)
    name: str = ""  # e.g. glue/sst2, files:data/rt_polarity
    submission_file: str | None = None  # GLUE benchmark file name for test predictions
    submission_labels: tuple[str, ...] | None = None  # how each class is written in that file

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe(self) -> str:
        return self.name or "dataset"


@dataclass
class _Table:
    """A split as read from its file, before validation: raw text and label columns."""

    split: str
    origin: str
    frame: pd.DataFrame
    text_columns: list[str]
    label_column: str | None


SourceReader = Callable[[DataConfig], RawDataset]
#: The readers of ``data.source``, by name (``register_source``): built-ins below, a user's own from their code.
SOURCES: dict[str, SourceReader] = {}


def register_source(name: str, needs: tuple[str, ...] = ()) -> Callable[[SourceReader], SourceReader]:
    """Register ``reader(cfg) -> RawDataset`` (its labelled splits, before subsampling and transfer text) as
    ``data.source: NAME``; ``needs``: the ``data.*`` fields it requires (``config.DATA_SOURCES``, so a config that lacks
    one is refused when it is read). A new source is one decorated function, in this file or the user's own."""
    def register(reader: SourceReader) -> SourceReader:
        declare_data_source(name, needs)
        SOURCES[name] = reader
        return reader

    return register


@register_source("files", needs=DATA_SOURCES["files"])
def _files_source(cfg: DataConfig) -> RawDataset:
    tables, fingerprint = _read_files(cfg)
    dataset = _build(tables, cfg, known_labels=None, fingerprint=fingerprint)
    dataset.name = f"files:{cfg.path}"
    return dataset


@register_source("glue", needs=DATA_SOURCES["glue"])
def _glue_source(cfg: DataConfig) -> RawDataset:
    task = _glue_task(cfg.task)
    tables, fingerprint = _read_glue(cfg, task)
    dataset = _build(tables, cfg, known_labels=list(task.labels), fingerprint=fingerprint)
    dataset.name = f"glue/{task.name}"
    dataset.metrics = task.metrics
    dataset.submission_file = task.submission_file
    dataset.submission_labels = task.submission_labels
    return dataset


@register_source("mind", needs=DATA_SOURCES["mind"])
def _mind_source(cfg: DataConfig) -> RawDataset:
    tables, fingerprint = _read_mind(cfg)
    dataset = _build(tables, cfg, known_labels=None, fingerprint=fingerprint)
    dataset.name = f"mind:{cfg.path}"
    return dataset


def load_source(cfg: DataConfig) -> RawDataset:
    """Read, validate, label-map and subsample the configured source (``SOURCES[data.source]``), with its transfer text."""
    if cfg.source not in SOURCES:
        raise DataError(f"data.source: {cfg.source!r} has no reader; expected one of {', '.join(SOURCES)}")
    dataset = SOURCES[cfg.source](cfg)
    if dataset.num_labels != 2 and "f1" in dataset.metrics:
        dataset.metrics = tuple(m for m in dataset.metrics if m != "f1")
    dataset = _subsample(dataset, cfg)
    if cfg.unlabeled:
        text_columns = list(cfg.text_fields or (_glue_task(cfg.task).hub_fields if cfg.source == "glue" else ["text"]))
        if len(text_columns) != (2 if dataset.pair else 1):
            raise DataError(f"data.unlabeled: the labelled data has {'sentence pairs' if dataset.pair else 'one text'} "
                            f"per row; set data.text_fields to its column(s) in {cfg.unlabeled}")
        split, fingerprint = load_unlabeled(cfg, text_columns)
        own = dataset.splits.get(UNLABELED)  # the training rows without a label (data.missing_labels: unlabeled)
        if own is not None:
            shifted = split.frame.assign(example_id=split.frame["example_id"] + len(own.frame))
            split = RawSplit(UNLABELED, f"{own.origin} + {split.origin}", pd.concat([own.frame, shifted], ignore_index=True),
                             labelled=False)
            fingerprint = stable_hash({"own": dataset.unlabeled_fingerprint, "files": fingerprint})
        dataset.splits[UNLABELED] = split
        dataset.unlabeled_fingerprint = fingerprint
    return dataset


def load_unlabeled(cfg: DataConfig, text_columns: list[str]) -> tuple[RawSplit, str]:
    """``data.unlabeled`` → a validated unlabelled split (label −1, ids from ``UNLABELED_ID_BASE``) and its
    fingerprint (the files' sha256, the columns, ``limit_unlabeled`` and ``data.seed``).

    A file (Parquet / CSV / TSV / JSON Lines with the ``text_columns``; ``.txt``: one text a line, blank lines
    skipped) or a folder whose files of those kinds are read in name order. Transfer text can be many times the
    labelled data, so it is read and checked in Arrow, without a Python string for each row (Parquet: only its text
    columns, by pyarrow); the frame's text columns are ``ArrowDtype(large_string)``: the text's bytes + 8 a row."""
    root = Path(cfg.unlabeled).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (*FILE_SUFFIXES, TEXT_SUFFIX))
        if not files:
            raise DataError(f"data.unlabeled: {root} holds no {', '.join((*FILE_SUFFIXES, TEXT_SUFFIX))} file")
    elif root.is_file():
        files = [root]
    else:
        raise DataError(f"data.unlabeled: {root} does not exist; expected a file or folder of texts")
    columns: list[list[pa.Array]] = [[] for _ in text_columns]  # per text column: its Arrow chunks, file after file
    for path in files:
        if path.suffix.lower() == TEXT_SUFFIX:
            if len(text_columns) != 1:
                raise DataError(f"{path}: a .txt file holds one text a line; sentence pairs need a table with columns {text_columns}")
            columns[0].append(_text_lines(path))
            continue
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"{path}: unsupported file type; expected one of {', '.join((*FILE_SUFFIXES, TEXT_SUFFIX))}")
        table = _read_text_columns(path, text_columns, cfg)
        for i, col in enumerate(text_columns):
            columns[i] += _text_array(str(path), col, table.column(col)).chunks
        del table
    texts = [pa.chunked_array(chunks, pa.large_string()).combine_chunks() for chunks in columns]
    n = len(texts[0])
    if not n:
        raise DataError(f"data.unlabeled: {root} holds no text; expected at least one unlabelled example")
    frame = pd.DataFrame({"example_id": pd.Series(range(UNLABELED_ID_BASE, UNLABELED_ID_BASE + n), dtype="int64"),
                          "text_a": pd.arrays.ArrowExtensionArray(texts[0])})
    if len(texts) == 2:
        frame["text_b"] = pd.arrays.ArrowExtensionArray(texts[1])
    frame["label"] = pd.Series(NO_LABEL, index=frame.index, dtype="int64")
    if cfg.limit_unlabeled is not None and n > cfg.limit_unlabeled:
        frame = frame.sample(n=cfg.limit_unlabeled, random_state=cfg.seed).sort_index().reset_index(drop=True)
    fingerprint = stable_hash({"files": [file_sha256(p) for p in files], "columns": text_columns,
                               "limit": cfg.limit_unlabeled, "seed": cfg.seed})
    return RawSplit(UNLABELED, str(root), frame, labelled=False), fingerprint


def _text_lines(path: Path) -> pa.Array:
    """A ``.txt`` file's non-blank lines (a trailing carriage return removed), as Arrow strings, split in Arrow."""
    whole = pa.array([_read_text(path)], pa.large_string())
    lines = pc.list_flatten(pc.split_pattern(whole, "\n"))
    lines = pc.utf8_rtrim(lines, characters="\r")
    return lines.filter(pc.invert(pc.equal(pc.utf8_trim_whitespace(lines), "")))


def _read_text_columns(path: Path, text_columns: list[str], cfg: DataConfig) -> pa.Table:
    """The text columns of one unlabelled file as an Arrow table: Parquet read by pyarrow, only those columns (no
    pandas copy of the file); the other formats through ``read_table``. A missing column: ``_require_columns``' error."""
    if path.suffix.lower() == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            table = parquet.read(columns=text_columns) if set(text_columns) <= set(names) else None
        except Exception as exc:  # not Parquet, or damaged
            raise DataError(f"{path}: cannot parse it as parquet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if table is not None:
            return table
        frame = pd.DataFrame(columns=names)
    else:
        frame = read_table(path)
    _require_columns(_Table(UNLABELED, str(path), frame, text_columns, None), cfg)
    return pa.table({c: _column_to_arrow(str(path), c, frame[c]) for c in text_columns})


def _column_to_arrow(origin: str, column: str, series: pd.Series) -> pa.Array:
    try:
        return pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: the row-by-row check names the first row that is not text
        _check_texts(origin, column, series.tolist())
        raise DataError(f"{origin}, column {column!r}: expected text in every row") from None


def _text_array(origin: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column as Arrow strings, with ``_text_column``'s checks and errors (null, not text, empty)."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) and values.null_count < len(values):
        _check_texts(origin, column, values.to_pylist())  # numbers, lists…: names the first row that is not text
    values = values.cast(pa.large_string())
    bad = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values), ""))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        what = "missing text (null)" if values[row].as_py() is None else "empty text"
        raise DataError(f"{origin} row {row + 1}, column {column!r}: {what}")
    return values


# ---- validation and label mapping ---------------------------------------------------------------

def _build(tables: list[_Table], cfg: DataConfig, known_labels: list[str] | None, fingerprint: str) -> RawDataset:
    by_split = {t.split: t for t in tables}
    if "train" not in by_split:
        raise DataError(f"{_where(cfg)}: no train split found")
    if "validation" not in by_split:
        raise DataError(f"{_where(cfg)}: no validation split found (expected a validation or dev file)")
    for split in ("train", "validation"):
        if len(by_split[split].frame) == 0:
            raise DataError(f"{by_split[split].origin}: the {split} split has no rows; expected at least one labelled example")
    pair = len(by_split["train"].text_columns) == 2
    train, unlabelled = _split_off_unlabelled(by_split["train"], cfg)
    if len(train.frame) == 0:
        raise DataError(f"{train.origin}: no training row has a label; expected at least one labelled example")
    tables = [train if t.split == "train" else t for t in tables]
    raw_train_labels = _label_values(train)
    label_names, as_ids = _label_space(raw_train_labels, train, cfg, known_labels)

    notes: list[str] = []
    splits: dict[str, RawSplit] = {}
    for table in tables:
        texts = [_text_column(table, col) for col in table.text_columns]
        if table.label_column is None:  # an unlabelled test split: predictions only
            frame = pd.DataFrame({"example_id": pd.Series(range(len(texts[0])), dtype="int64"), "text_a": texts[0]})
            if pair:
                frame["text_b"] = texts[1]
            frame["label"] = pd.Series([NO_LABEL] * len(frame), dtype="int64")
            splits[table.split] = RawSplit(table.split, table.origin, frame, labelled=False)
            continue
        labels = _label_values(table)
        ids = []
        keep = []
        for row, value in enumerate(labels):
            label_id = as_ids(value, table, row)
            if label_id is None:  # unseen evaluation label with data.unseen_labels: drop
                continue
            ids.append(label_id)
            keep.append(row)
        dropped = len(labels) - len(keep)
        if dropped:
            notes.append(f"{table.origin}: dropped {dropped} rows whose label does not occur in training")
        frame = pd.DataFrame({"example_id": pd.Series(keep, dtype="int64"), "text_a": [texts[0][i] for i in keep]})
        if pair:
            frame["text_b"] = [texts[1][i] for i in keep]
        frame["label"] = pd.Series(ids, dtype="int64")
        splits[table.split] = RawSplit(table.split, table.origin, frame)
    dataset = RawDataset(splits, label_names, pair, fingerprint, notes=notes)
    if unlabelled is not None:
        texts = [_text_column(_Table("train", train.origin, unlabelled, train.text_columns, None), c) for c in train.text_columns]
        frame = pd.DataFrame({"example_id": pd.Series(range(UNLABELED_ID_BASE, UNLABELED_ID_BASE + len(unlabelled)), dtype="int64"),
                              "text_a": texts[0]})
        if pair:
            frame["text_b"] = texts[1]
        frame["label"] = pd.Series(NO_LABEL, index=frame.index, dtype="int64")
        dataset.splits[UNLABELED] = RawSplit(UNLABELED, f"{train.origin} (rows without a label)", frame, labelled=False)
        dataset.unlabeled_fingerprint = stable_hash({"missing_labels_of": fingerprint})
        notes.append(f"{train.origin}: {len(frame)} rows without a label are transfer text (data.missing_labels: unlabeled)")
    return dataset


def _text_column(table: _Table, column: str) -> list[str]:
    values = table.frame[column].tolist()
    _check_texts(table.origin, column, values)
    return values


def _check_texts(origin: str, column: str, values: list) -> None:
    """Every value a non-empty text; else a one-line error naming the first bad row (1-based)."""
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            raise DataError(f"{origin} row {row + 1}, column {column!r}: missing text (null)")
        if not isinstance(value, str):
            raise DataError(f"{origin} row {row + 1}, column {column!r}: expected text, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise DataError(f"{origin} row {row + 1}, column {column!r}: empty text")


def _missing(value) -> bool:
    """No label: null, NaN, an empty text."""
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _label_values(table: _Table) -> list:
    if table.label_column is None:
        raise DataError(f"{table.origin}: has no label column")
    values = table.frame[table.label_column].tolist()
    for row, value in enumerate(values):
        if _missing(value):
            raise DataError(f"{table.origin} row {row + 1}, column {table.label_column!r}: missing label"
                            + ("; data.missing_labels: unlabeled makes such training rows transfer text" if table.split == "train" else ""))
    return values


def _split_off_unlabelled(table: _Table, cfg: DataConfig) -> tuple[_Table, pd.DataFrame | None]:
    """``data.missing_labels: unlabeled``: the training rows without a label (null, NaN, empty, or a missing-value word
    such as ``None`` / ``NaN`` in a column of class ids) taken out of ``table``, as a frame of their texts."""
    if cfg.missing_labels != "unlabeled" or table.split != "train" or table.label_column is None:
        return table, None
    values = table.frame[table.label_column]
    words = values.map(lambda v: isinstance(v, str) and v.strip().lower() in MISSING_TOKENS)
    ids = values.map(lambda v: _as_int(v) is not None)
    missing = values.map(_missing) | (words & bool(ids.any()))  # a word like "None" is a missing label only among ids
    if not bool(missing.any()):
        return table, None
    kept = _Table(table.split, table.origin, table.frame[~missing].reset_index(drop=True), table.text_columns, table.label_column)
    return kept, table.frame[missing][table.text_columns].reset_index(drop=True)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value.strip())
    try:  # numpy integer scalars
        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return None


MAX_CLASSES = 100_000  # integer ids make 0..max classes: a stray id of 10^12 must not fill the memory


def _is_number(value) -> bool:
    """A number, or text that reads as one (CSV labels arrive as text)."""
    if isinstance(value, str):
        try:
            float(value.strip())
        except ValueError:
            return False
        return True
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _label_space(train_labels: list, train: _Table, cfg: DataConfig, known: list[str] | None):
    """(label names, value → id) from the training labels. Three cases:

    - known names (GLUE): a name maps to its index; an integer id in range is taken as is;
    - integer ids (every training label is an integer): ids 0..C−1, C = data.num_labels or max + 1;
    - names: the sorted distinct training labels; anything else is a label never seen in training.
    """
    column = train.label_column
    ints = [_as_int(v) for v in train_labels]
    numbers = [_is_number(v) for v in train_labels]
    if known is None and all(numbers) and None in ints:  # numbers, one of them not a whole number: not a class id
        row = ints.index(None)
        raise DataError(f"{train.origin} row {row + 1}, column {column!r}: label {train_labels[row]!r} is not a class id; "
                        "expected integer ids 0..C-1 or names")
    whole = sum(i is not None for i in ints)
    if known is None and 0 < whole < len(ints):  # class ids and other values in one column: never re-read as names
        row = next(r for r, i in enumerate(ints) if (i is None) == (whole * 2 >= len(ints)))
        value = train_labels[row]
        if isinstance(value, str) and value.strip().lower() in MISSING_TOKENS:
            raise DataError(f"{train.origin} row {row + 1}, column {column!r}: missing label ({value!r}) in a column of class "
                            "ids; label every row, or set data.missing_labels: unlabeled to use such rows as transfer text")
        raise DataError(f"{train.origin} row {row + 1}, column {column!r}: label {value!r} is not like the others — {whole} "
                        f"of the {len(ints)} training labels are integer class ids, {len(ints) - whole} are not; expected "
                        "integer ids 0..C-1 throughout, or names throughout")
    if known is not None:
        names, index = list(known), {name: i for i, name in enumerate(known)}
    elif all(i is not None for i in ints):
        if min(ints) < 0:
            row = ints.index(min(ints))
            raise DataError(f"{train.origin} row {row + 1}, column {column!r}: label {ints[row]} is negative; expected ids 0..C-1 or names")
        if cfg.num_labels is not None and max(ints) >= cfg.num_labels:
            row = ints.index(max(ints))
            raise DataError(
                f"{train.origin} row {row + 1}, column {column!r}: label {ints[row]} is out of range for data.num_labels={cfg.num_labels}"
            )
        if max(ints) >= MAX_CLASSES:
            row = ints.index(max(ints))
            raise DataError(f"{train.origin} row {row + 1}, column {column!r}: label {ints[row]} would make {ints[row] + 1:,} "
                            f"classes; expected ids 0..C-1 with C <= {MAX_CLASSES:,} (or label names)")
        names, index = [str(i) for i in range(max(ints) + 1)], None
    else:
        names = sorted({str(v).strip() for v in train_labels})
        index = {name: i for i, name in enumerate(names)}
    if cfg.num_labels is not None and cfg.num_labels != len(names):
        raise DataError(
            f"data.num_labels={cfg.num_labels} disagrees with {train.origin}, whose labels give {len(names)} classes ({_preview(names)})"
        )
    if known is not None:
        why = "not one of the task's labels"
    elif index is None and cfg.num_labels is not None:
        why = f"out of range for data.num_labels={cfg.num_labels}"
    else:
        why = "never seen in training"

    def as_id(value, table: _Table, row: int) -> int | None:
        label_id = index.get(str(value).strip()) if index is not None else None
        if label_id is None and (index is None or known is not None):
            number = _as_int(value)
            if number is not None and 0 <= number < len(names):
                label_id = number
            elif number is None and index is None and isinstance(value, str) and value.strip().lower() in MISSING_TOKENS:
                raise DataError(f"{table.origin} row {row + 1}, column {table.label_column!r}: missing label ({value!r}); "
                                "every validation and test row needs its label")
            elif number is None and index is None:
                raise DataError(
                    f"{table.origin} row {row + 1}, column {table.label_column!r}: label {value!r} is not a class id; "
                    f"the training labels are ids 0..{len(names) - 1}"
                )
        if label_id is not None:
            return label_id
        if table.split != "train" and cfg.unseen_labels == "drop":
            return None
        raise DataError(
            f"{table.origin} row {row + 1}, column {table.label_column!r}: label {value!r} is {why} (labels: {_preview(names)})"
        )

    return names, as_id


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", …" if len(names) > limit else "")


def split_column(cfg: DataConfig, split: str, column: str) -> pd.Series:
    """Column ``column`` of a files source's ``split`` file, indexed by row position (= the rows' example ids): the
    groups (a film, a news id) the analysis resamples. A ``DataError`` names the file when the column is not there."""
    if cfg.source != "files":
        raise DataError(f"group column {column!r}: groups are read from a files source's files; data.source is {cfg.source!r}")
    path = _find_split_file(_folder(cfg), split)
    if path is None:
        raise DataError(f"{_folder(cfg)}: no {split} file to read the group column {column!r} from")
    frame = read_table(path)
    if column not in frame.columns:
        raise DataError(f"{path}: no column {column!r} (the group column); columns are {list(frame.columns)}")
    return frame[column].reset_index(drop=True)  # example ids are row positions in the file (kept by limit_eval)


def _subsample(dataset: RawDataset, cfg: DataConfig) -> RawDataset:
    for name, split in dataset.splits.items():
        limit = cfg.limit_train if name == "train" else cfg.limit_eval
        if limit is not None and len(split.frame) > limit:
            split.frame = split.frame.sample(n=limit, random_state=cfg.seed).sort_index().reset_index(drop=True)
    return dataset


def _where(cfg: DataConfig) -> str:
    return cfg.path or f"glue/{cfg.task}"


# ---- readers ------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); expected UTF-8 text"
        ) from None


def read_table(path: Path, header: bool = True, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One data file (Parquet, CSV, TSV, JSON Lines) as a DataFrame; text files must be UTF-8."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        text = _read_text(path)
        if suffix == ".jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(
                io.StringIO(text),
                sep="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                header=0 if header else None,
                names=list(names) if names else None,
            )
    except DataError:
        raise
    except Exception as exc:  # pyarrow / pandas parse errors
        raise DataError(f"{path}: cannot parse it as {suffix[1:]} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    raise DataError(f"{path}: unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}")


def _find_split_file(folder: Path, split: str) -> Path | None:
    found = [folder / f"{stem}{suffix}" for stem in SPLIT_STEMS[split] for suffix in FILE_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: several files for the {split} split ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _folder(cfg: DataConfig) -> Path:
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.path: {folder} is not a folder")
    return folder


def _require_columns(table: _Table, cfg: DataConfig) -> None:
    columns = list(table.frame.columns)
    for col in table.text_columns:
        if col not in columns:
            hint = " (data.text_fields asks for a sentence pair)" if len(table.text_columns) == 2 else " (data.text_fields)"
            raise DataError(f"{table.origin}: no column {col!r}{hint}; columns are {columns}")
    if table.label_column is not None and table.label_column not in columns:
        raise DataError(f"{table.origin}: no column {table.label_column!r} (data.label_field); columns are {columns}")


def _read_files(cfg: DataConfig) -> tuple[list[_Table], str]:
    folder = _folder(cfg)
    tables, hashes = [], {}
    for split in SPLITS:
        path = _find_split_file(folder, split)
        if path is None:
            if split == "test":
                continue
            expected = " or ".join(f"{s}{{{','.join(FILE_SUFFIXES)}}}" for s in SPLIT_STEMS[split])
            raise DataError(f"{folder}: no {split} file (expected {expected})")
        frame = read_table(path)
        label = cfg.label_field if (split != "test" or cfg.label_field in frame.columns) else None  # None: unlabelled test
        table = _Table(split, str(path), frame, list(cfg.text_fields or []), label)
        _require_columns(table, cfg)
        tables.append(table)
        hashes[split] = file_sha256(path)
    return tables, stable_hash({"source": "files", "files": hashes})


def _glue_task(name: str | None) -> GlueTask:
    key = (name or "").lower().replace("-", "")
    if key == "stsb":
        raise DataError("data.task: stsb is a regression task; mtbert-ray distils classifiers")
    if key not in GLUE_TASKS:
        raise DataError(f"data.task: unknown GLUE task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def _read_glue(cfg: DataConfig, task: GlueTask) -> tuple[list[_Table], str]:
    if cfg.path is None:
        return _read_glue_hub(cfg, task)
    folder = _folder(cfg)
    for candidate in (folder, folder / GLUE_FOLDERS[task.name], folder / task.name):
        if (candidate / "train.tsv").is_file():
            return _read_glue_tsv(candidate, task)
        if list((candidate).glob("train-*.parquet")) or list((candidate / task.name).glob("train-*.parquet")):
            return _read_glue_parquet(candidate if list(candidate.glob("train-*.parquet")) else candidate / task.name, task)
    raise DataError(
        f"data.path: {folder} holds no GLUE {task.name} data (expected train.tsv and {task.dev_file}, "
        f"or the hub layout {task.name}/train-*.parquet)"
    )


def _read_glue_tsv(folder: Path, task: GlueTask) -> tuple[list[_Table], str]:
    tables, hashes = [], {}
    for split, filename in (("train", "train.tsv"), ("validation", task.dev_file), ("test", task.test_file)):
        path = folder / filename
        if not path.is_file():
            if split == "test":
                continue
            raise DataError(f"{folder}: no {filename} (the GLUE {task.name} {split} split)")
        if split == "test":  # GLUE test labels are hidden: test.tsv is `index, <text fields>` (CoLA included)
            frame = read_table(path)
            label = task.tsv_label if task.tsv_label in frame.columns else None
        else:
            frame = read_table(path, header=task.tsv_header, names=task.tsv_columns)
            label = task.tsv_label
        table = _Table(split, str(path), frame, list(task.tsv_fields), label)
        _require_columns(table, DataConfig(source="glue", task=task.name))
        tables.append(table)
        hashes[split] = file_sha256(path)
    return tables, stable_hash({"source": "glue-tsv", "task": task.name, "files": hashes})


def _read_glue_parquet(folder: Path, task: GlueTask) -> tuple[list[_Table], str]:
    tables, hashes = [], {}
    for split, prefix in (("train", "train"), ("validation", task.hub_validation), ("test", task.hub_test)):
        files = sorted(folder.glob(f"{prefix}-*.parquet"))
        if not files:
            if split == "test":
                continue
            raise DataError(f"{folder}: no {prefix}-*.parquet (the GLUE {task.name} {split} split)")
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        label = None if split == "test" and (frame["label"] < 0).all() else "label"  # hidden test labels (-1)
        table = _Table(split, str(files[0]) if len(files) == 1 else f"{folder}/{prefix}-*.parquet", frame, list(task.hub_fields), label)
        _require_columns(table, DataConfig(source="glue", task=task.name))
        tables.append(table)
        hashes[split] = [file_sha256(f) for f in files]
    return tables, stable_hash({"source": "glue-parquet", "task": task.name, "files": hashes})


def _read_glue_hub(cfg: DataConfig, task: GlueTask) -> tuple[list[_Table], str]:
    import datasets  # deferred: only a GLUE task from the hub needs it, and it takes seconds to import

    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name, revision=cfg.revision)
    except Exception as exc:  # offline without a cached copy, unknown revision, …
        raise DataError(
            f"glue/{task.name}: cannot load nyu-mll/glue from the hub or the local HF cache ({str(exc).splitlines()[0]}); "
            "set data.path to a folder with the GLUE TSV files when offline"
        ) from None
    tables, prints = [], {}
    for split, hub_split in (("train", "train"), ("validation", task.hub_validation), ("test", task.hub_test)):
        if hub_split not in ds:
            continue
        frame = ds[hub_split].to_pandas()
        label = None if split == "test" and (frame["label"] < 0).all() else "label"  # hidden test labels (-1)
        tables.append(_Table(split, f"nyu-mll/glue/{task.name}:{hub_split}", frame, list(task.hub_fields), label))
        prints[split] = ds[hub_split]._fingerprint
    return tables, stable_hash({"source": "glue-hub", "task": task.name, "revision": cfg.revision, "fingerprints": prints})


def _read_mind(cfg: DataConfig) -> tuple[list[_Table], str]:
    folder = _folder(cfg)
    found: dict[str, Path] = {}
    for split, suffix in (("train", "train"), ("validation", "dev"), ("test", "test")):
        candidates = sorted(folder.glob(f"MIND*_{suffix}/news.tsv"))
        if len(candidates) > 1:
            raise DataError(f"{folder}: several MIND {suffix} folders ({', '.join(str(c.parent.name) for c in candidates)}); keep one size")
        if candidates:
            found[split] = candidates[0]
    for split in ("train", "validation"):
        if split not in found:
            name = "train" if split == "train" else "dev"
            raise DataError(f"{folder}: no MIND{{small,large}}_{name}/news.tsv (the MIND {split} split)")
    tables, hashes = [], {}
    seen_ids: set[str] = set()
    for split in ("train", "validation", "test"):
        if split not in found:
            continue
        path = found[split]
        frame = read_table(path, header=False, names=MIND_COLUMNS)
        if frame.shape[1] != len(MIND_COLUMNS):
            raise DataError(f"{path}: expected {len(MIND_COLUMNS)} tab-separated columns ({', '.join(MIND_COLUMNS)})")
        # The same news item appears in several MIND splits: keep each in the first split only (no leakage).
        if split != "train":
            frame = frame[~frame["NewsID"].isin(seen_ids)]
        seen_ids.update(frame["NewsID"].tolist())
        frame = frame.reset_index(drop=True)
        if cfg.mind_text == "title_abstract":
            frame["Text"] = (frame["Title"].str.strip() + " " + frame["Abstract"].str.strip()).str.strip()
            text_col = "Text"
        else:
            text_col = "Title"
        tables.append(_Table(split, str(path), frame, [text_col], "Category"))
        hashes[split] = file_sha256(path)
    return tables, stable_hash({"source": "mind", "files": hashes, "text": cfg.mind_text})
