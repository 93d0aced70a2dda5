"""Tiny random-initialised encoders with their own tokenizers, written to disk for tests.

A 2-layer BERT with a WordPiece tokenizer and a 2-layer RoBERTa with a byte-level BPE tokenizer,
both trained on the fly on a small corpus, so tests cover different tokenizers, architectures
and widths in seconds. Saved with ``save_pretrained`` so every code path (and Ray workers)
loads them by folder, exactly like hub models.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast, RobertaConfig, RobertaModel, RobertaTokenizerFast

CORPUS = [
    "a three-hour cinema master class.",
    "it's always fascinating to watch the essayist at work.",
    "an exhaustive investigation into the roots of the story.",
    "although it's a bit smug and repetitive, this is fun.",
    "the film is a dull, lifeless mess that never finds its footing.",
    "a gorgeous, witty, seductive movie.",
    "the acting is terrible and the plot makes no sense.",
    "one of the best films of the year, moving and funny.",
    "boring, predictable and far too long.",
    "a delightful surprise with great performances.",
    "unwatchable nonsense from start to finish.",
    "charming and heartfelt, a real pleasure.",
]


def _corpus(extra: list[str] | None = None) -> list[str]:
    return CORPUS * 5 + (extra or [])


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, extra_corpus: list[str] | None = None, seed: int = 0) -> Path:
    """WordPiece (lower-cased) tokenizer + random 2-layer BertModel, saved under ``folder``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(extra_corpus), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_tiny_roberta(folder: Path, hidden: int = 48, layers: int = 2, extra_corpus: list[str] | None = None, seed: int = 1) -> Path:
    """Byte-level BPE tokenizer + random 2-layer RobertaModel, saved under ``folder``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        _corpus(extra_corpus),
        trainers.BpeTrainer(vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False
    )
    tok.decoder = decoders.ByteLevel()
    fast = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=130,
                           pad_token_id=tok.token_to_id("<pad>"), bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    folder.mkdir(parents=True, exist_ok=True)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_tiny_student(folder: Path, bert: str, labels: tuple[str, ...] = ("negative", "positive"), seed: int = 0) -> Path:
    """A format-1 export (as training checkpoints hold it) of a 1-layer student of the tiny BERT: encoder folder,
    head.safetensors, mtbert_student.json and the tokenizer."""
    import contextlib
    import io

    import torch

    from mtbert_ray.models.hub import load_encoder, load_tokenizer
    from mtbert_ray.models.student import StudentModel
    from mtbert_ray.models.student_io import save_student

    torch.manual_seed(seed)
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' "Writing model shards" bar
        model = StudentModel(load_encoder(bert, num_layers=1), len(labels), 16)
        save_student(model, folder, list(labels), max_length=32, pair=False)
        load_tokenizer(bert).save_pretrained(folder)
    return folder
