"""Cross-tokenizer alignment between a WordPiece and a byte-level BPE tokenizer."""
from __future__ import annotations

import pytest
import torch

from mtbert_ray.data.tokenize import encode, pad_token_batch
from mtbert_ray.models.align import align_states, alignment_from_batches
from mtbert_ray.models.hub import load_tokenizer

SENTENCES = [
    "It's a gorgeous, witty, seductive movie.",
    "Boring!",
    "The acting is terrible and the plot makes no sense at all, sadly.",
    "unwatchable nonsense",
]
SECOND = ["a delightful surprise", "fun", "one of the best films", "charming and heartfelt"]


@pytest.fixture(scope="module")
def tokenizers(tiny_models):
    return load_tokenizer(tiny_models["bert"]), load_tokenizer(tiny_models["roberta"])


def _batches(tok_s, tok_t, pairs: bool, max_length: int = 64):
    second = SECOND if pairs else None
    return (
        pad_token_batch(encode(tok_s, SENTENCES, second, max_length), tok_s.pad_token_id),
        pad_token_batch(encode(tok_t, SENTENCES, second, max_length), tok_t.pad_token_id),
    )


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("direction", ["bert<-roberta", "roberta<-bert"])
def test_rows_sum_to_one_and_specials_map_to_specials(tokenizers, pairs, direction):
    tok_s, tok_t = tokenizers if direction == "bert<-roberta" else tokenizers[::-1]
    s, t = _batches(tok_s, tok_t, pairs)
    a = alignment_from_batches(s, t)
    assert a.shape == (len(SENTENCES), s["input_ids"].shape[1], t["input_ids"].shape[1])
    real = s["attention_mask"].bool()
    assert torch.allclose(a.sum(-1)[real], torch.ones(int(real.sum())))
    assert (a.sum(-1)[~real] == 0).all(), "padding rows must be empty"
    t_pad = ~t["attention_mask"].bool()
    assert (a.masked_fill(~t_pad[:, None, :], 0) == 0).all(), "no weight on teacher padding"
    s_spec = s["special_tokens_mask"].bool() & real
    t_spec = t["special_tokens_mask"].bool() & t["attention_mask"].bool()
    # special rows put all their weight on special columns, content rows none
    spec_mass = (a * t_spec[:, None, :].float()).sum(-1)
    assert torch.allclose(spec_mass[s_spec], torch.ones(int(s_spec.sum())))
    assert (spec_mass[real & ~s_spec] == 0).all()
    # first special ([CLS]/<s>) maps to the first special; the last to the last
    for b in range(len(SENTENCES)):
        s_pos = s_spec[b].nonzero().flatten()
        t_pos = t_spec[b].nonzero().flatten()
        assert a[b, s_pos[0], t_pos[0]] == 1 and a[b, s_pos[-1], t_pos[-1]] == 1


def test_content_tokens_average_overlapping_pieces(tokenizers):
    tok_s, tok_t = tokenizers
    s, t = _batches(tok_s, tok_t, pairs=False)
    a = alignment_from_batches(s, t)
    # Every link joins two tokens whose character spans overlap.
    b, i, j = (a > 0).nonzero(as_tuple=True)
    content = ~s["special_tokens_mask"].bool()[b, i]
    so, to = s["offsets"][b, i], t["offsets"][b, j]
    overlap = torch.minimum(so[:, 1], to[:, 1]) > torch.maximum(so[:, 0], to[:, 0])
    assert overlap[content].all()
    # The weights of a row are equal (a plain mean over the overlapping teacher tokens).
    for row in a.reshape(-1, a.shape[-1]):
        nz = row[row > 0]
        if len(nz):
            assert torch.allclose(nz, torch.full_like(nz, 1.0 / len(nz)))


@pytest.mark.parametrize("pairs", [False, True])
def test_identical_tokenizers_give_identity(tokenizers, pairs):
    tok = tokenizers[1]
    s, t = _batches(tok, tok, pairs)
    a = alignment_from_batches(s, t)
    mask = s["attention_mask"].bool()
    eye = torch.eye(a.shape[1]).expand_as(a) * mask[:, :, None] * mask[:, None, :]
    assert torch.equal(a, eye)
    states = torch.randn(a.shape[0], a.shape[2], 5)
    assert torch.allclose(align_states(states, a)[mask], states[mask])


def test_truncated_teacher_tokens_fall_back_to_nearest(tokenizers):
    """The teacher truncates earlier than the student: the student's extra tokens still get a row summing to 1."""
    tok_s, tok_t = tokenizers
    s = pad_token_batch(encode(tok_s, SENTENCES, None, 64), tok_s.pad_token_id)
    t = pad_token_batch(encode(tok_t, SENTENCES, None, 5), tok_t.pad_token_id)
    a = alignment_from_batches(s, t)
    real = s["attention_mask"].bool()
    assert torch.allclose(a.sum(-1)[real], torch.ones(int(real.sum())))


def test_pair_offsets_are_global(tokenizers):
    tok = tokenizers[0]
    enc = encode(tok, ["the film"], ["the plot"], 32)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    spans = list(zip(tokens, zip(enc["offset_start"][0], enc["offset_end"][0])))
    assert ("film", (4, 8)) in spans
    assert ("plot", (13, 17)) in spans  # len("the film") + 1 = 9, then "the " = 4
