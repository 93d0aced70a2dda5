"""Transfer-set augmentation: more unlabelled text for the teachers to label, made from the training sentences.

Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", which MT-BERT cites)
distil on a transfer set made from the training sentences by three rules, applied ``copies`` times to every sentence
(``data.augment``):

- word dropout: each word is left out with probability ``word_dropout`` (their masking; a dropped word needs no mask
  token, which differs between the teachers' tokenizers);
- replacement: each word is replaced with probability ``replace`` — by a word drawn from the training text's unigram
  distribution (their POS-guided replacement without a tagger), or, with ``mlm_model``, by one of the 5 words a
  masked language model finds likeliest in its place (TinyBERT's augmentation);
- n-gram sampling: with probability ``ngram`` the result is cut to a random window of 1–5 words.

The sentences are seeded, deduplicated, and kept out of the labelled data: a generated sentence equal to any training,
validation or test sentence (after lower-casing and collapsing spaces) is dropped — and since they come from training
rows only, a source with groups (films, news ids) keeps them in the training rows' groups. The teachers label them
like any unlabelled text (``data.unlabeled``: the student learns their soft labels; no task loss). They are built
once per key — the labelled data, the unlabelled text, these settings — as a published stage of their own
(``augment/<key>/``), so every trial of a sweep reuses them.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.common.hashing import stable_hash
from mtbert_ray.common.metric_names import NO_LABEL, UNLABELED
from mtbert_ray.config import DataConfig
from mtbert_ray.data.sources import UNLABELED_ID_BASE, RawDataset, RawSplit
from mtbert_ray.models.hub import load_tokenizer
from mtbert_ray.store.stage import Built, build_dir, reuse_or_build

FORMAT_VERSION = 1
TEXTS_FILE = "texts.parquet"
MLM_TOP_K = 5
MAX_NGRAM = 5
_SPACES = re.compile(r"\s+")


def normalized(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def augment_key(raw: RawDataset, cfg: DataConfig, dataset_key: str) -> str:
    """The key of the augmented text: the labelled data, the unlabelled text it is also made from, the settings."""
    return stable_hash({"v": FORMAT_VERSION, "dataset": dataset_key, "unlabeled": raw.unlabeled_fingerprint,
                        "augment": cfg.augment.model_dump(mode="json")})


def augmented_fingerprint(raw: RawDataset, cfg: DataConfig, dataset_key: str) -> str:
    """The unlabelled split's content key once the augmented text joins it (what the teacher cache is keyed by);
    computable without generating a sentence (the dry run uses it)."""
    return stable_hash({"unlabeled": raw.unlabeled_fingerprint, "augment": augment_key(raw, cfg, dataset_key)})


class _MaskedLM:
    """A masked language model's likeliest words in place of a masked word (``data.augment.mlm_model``)."""

    def __init__(self, name: str) -> None:
        import torch  # deferred: only replacement by a masked LM needs torch and its model class
        from transformers import AutoModelForMaskedLM

        try:
            self.model = AutoModelForMaskedLM.from_pretrained(name).eval()
        except Exception as exc:  # noqa: BLE001 - no MLM head, not found: one line
            raise ConfigError(f"data.augment.mlm_model: {name!r} has no masked-LM head to load "
                              f"({str(exc).splitlines()[0][:160]}); give a model trained with one, or leave it null") from None
        self.tokenizer = load_tokenizer(name)
        if self.tokenizer.mask_token is None:
            raise ConfigError(f"data.augment.mlm_model: {name!r}'s tokenizer has no mask token")
        self.torch = torch

    def candidates(self, masked_sentences: Sequence[str]) -> list[list[str]]:
        """For each sentence holding one mask token: the top words (whole words, not the mask) in its place."""
        torch = self.torch
        out: list[list[str]] = []
        for start in range(0, len(masked_sentences), 64):
            batch = list(masked_sentences[start:start + 64])
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc).logits
            positions = (enc["input_ids"] == self.tokenizer.mask_token_id).nonzero()
            top = {int(row): logits[row, col].topk(MLM_TOP_K * 3).indices.tolist() for row, col in positions.tolist()}
            for row in range(len(batch)):
                words = [self.tokenizer.convert_ids_to_tokens(i) for i in top.get(row, [])]
                words = [w.replace("Ġ", "").replace("▁", "") for w in words if w.isalpha() or w.lstrip("Ġ▁").isalpha()]
                out.append(list(dict.fromkeys(w for w in words if w))[:MLM_TOP_K])
        return out


def generate(texts: Sequence[str], cfg: DataConfig, exclude: set[str]) -> list[str]:
    """``cfg.augment.copies`` variants of every text (word dropout, replacement, n-gram sampling), seeded by
    ``cfg.augment.seed``, without duplicates or anything in ``exclude`` (normalised labelled sentences)."""
    a = cfg.augment
    rng = random.Random(a.seed)
    words_of = [t.split() for t in texts]
    unigram = Counter(w for words in words_of for w in words)
    vocab, weights = list(unigram), list(unigram.values())
    mlm = _MaskedLM(a.mlm_model) if a.mlm_model and a.replace > 0 else None
    seen = set(exclude)
    out: list[str] = []
    for _ in range(a.copies):
        drafts: list[list[str]] = []
        masked: list[tuple[int, int, str]] = []  # (draft, position, the sentence with that word masked)
        for words in words_of:
            draft = []
            for word in words:
                r = rng.random()
                if r < a.word_dropout:
                    continue
                if r < a.word_dropout + a.replace:
                    if mlm is None:
                        draft.append(rng.choices(vocab, weights)[0])
                    else:
                        draft.append(word)
                        masked.append((len(drafts), len(draft) - 1, ""))
                    continue
                draft.append(word)
            drafts.append(draft)
        if mlm is not None and masked:
            sentences = [" ".join(w if i != pos else mlm.tokenizer.mask_token for i, w in enumerate(drafts[d]))
                         for d, pos, _ in masked]
            for (d, pos, _), options in zip(masked, mlm.candidates(sentences)):
                original = drafts[d][pos]
                options = [w for w in options if w.lower() != original.lower()]
                if options:
                    drafts[d][pos] = rng.choice(options)
        for draft in drafts:
            if draft and rng.random() < a.ngram:
                n = rng.randint(1, min(MAX_NGRAM, len(draft)))
                start = rng.randint(0, len(draft) - n)
                draft = draft[start:start + n]
            text = " ".join(draft)
            key = normalized(text)
            if key and key not in seen:
                seen.add(key)
                out.append(text)
    return out


def with_augmented(raw: RawDataset, cfg: DataConfig, dataset_key: str, cache: Path, verify: bool = False) -> RawDataset:
    """``raw`` with the augmented transfer text added to its unlabelled split (built once per key, then reused)."""
    if not cfg.augment.copies:
        return raw
    if raw.pair:
        raise ConfigError("data.augment: sentence pairs are not augmented (which text would the rules change?); "
                          "set data.augment.copies: 0, or give transfer pairs as data.unlabeled")
    key = augment_key(raw, cfg, dataset_key)
    fingerprint = augmented_fingerprint(raw, cfg, dataset_key)  # of the unlabelled split before the text joins it
    sources = list(raw.splits["train"].frame["text_a"])
    if cfg.augment.from_unlabeled and UNLABELED in raw.splits:
        sources += [str(t) for t in raw.splits[UNLABELED].frame["text_a"]]
    exclude = {normalized(str(t)) for split in raw.splits.values() for t in split.frame["text_a"]}

    def build(folder: Path) -> Built:
        with build_dir(folder) as tmp:
            texts = generate(sources, cfg, exclude)
            pq.write_table(pa.table({"text_a": pa.array(texts, pa.large_string())}), tmp / TEXTS_FILE)
            return Built(tmp, {"rows": len(texts), "from_rows": len(sources), "settings": cfg.augment.model_dump(mode="json")})

    published = reuse_or_build(cache, "augment", key, build,
                               what=f"transfer-set augmentation ({cfg.augment.copies}× {len(sources):,} sentences)", verify=verify)
    texts = pq.read_table(published.path / TEXTS_FILE)["text_a"].to_pylist()
    own = raw.splits.get(UNLABELED)
    start = UNLABELED_ID_BASE + (len(own.frame) if own is not None else 0)
    frame = pd.DataFrame({"example_id": pd.Series(range(start, start + len(texts)), dtype="int64"), "text_a": texts})
    frame["label"] = pd.Series(NO_LABEL, index=frame.index, dtype="int64")
    if own is not None:
        frame = pd.concat([own.frame, frame], ignore_index=True)
    raw.splits[UNLABELED] = RawSplit(UNLABELED, f"{own.origin + ' + ' if own is not None else ''}augmented ({key})", frame,
                                     labelled=False)
    raw.unlabeled_fingerprint = fingerprint
    raw.notes.append(f"transfer-set augmentation: {len(texts):,} sentences from {len(sources):,} ({cfg.augment.copies}×, "
                     f"deduplicated, none equal to a labelled sentence)")
    return raw
