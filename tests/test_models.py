"""Student builder and teacher ensemble on the real offline MiniLM checkpoints and tiny random models."""
from __future__ import annotations

import pytest
import torch

from mtbert_ray.data.tokenize import encode, pad_token_batch
from mtbert_ray.models.hub import ModelLoadError, load_encoder, load_tokenizer
from mtbert_ray.models.student import build_student
from mtbert_ray.models.teachers import TeacherEnsemble
from tests.conftest import MINILM_L3, MINILM_L6

TEXTS = ["a gorgeous, witty, seductive movie.", "boring, predictable and far too long, sadly."]


def _batch(name):
    tok = load_tokenizer(name)
    return pad_token_batch(encode(tok, TEXTS, None, 32), tok.pad_token_id)


@pytest.mark.parametrize("which", ["minilm", "tiny_roberta"])
def test_student_equals_first_layers_of_full_model(tiny_models, which):
    name = MINILM_L6 if which == "minilm" else tiny_models["roberta"]
    student = build_student(name, 2, num_labels=3).eval()
    full = load_encoder(name).eval()
    assert student.num_layers == 2 and len(student.encoder.encoder.layer) == 2
    batch = _batch(name)
    feed = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        s_out = student.forward_batch(batch, output_hidden_states=True)
        f_out = full(**feed, output_hidden_states=True)
    assert len(s_out.hidden_states) == 3
    for j in range(3):  # embeddings and layers 1, 2
        assert torch.allclose(s_out.hidden_states[j], f_out.hidden_states[j], atol=1e-5)
    assert s_out.logits.shape == (2, 3)
    # The student's parameters are its own copy: the pretrained weights were really loaded (not random).
    assert torch.allclose(
        student.encoder.embeddings.word_embeddings.weight, full.embeddings.word_embeddings.weight
    )


def test_student_deeper_than_checkpoint_is_an_error():
    with pytest.raises(ModelLoadError, match=r"num_layers=4 is deeper than .*paraphrase-MiniLM-L3-v2.*3 layers"):
        build_student(MINILM_L3, 4, num_labels=2)


def test_unknown_model_offline_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        build_student("no-such-org/no-such-model", 2, num_labels=2)


def test_teacher_ensemble_shapes_and_shared_head(tiny_models):
    names = [MINILM_L6, MINILM_L3, tiny_models["roberta"]]
    ensemble = TeacherEnsemble(names, num_labels=4, query_dim=16)
    assert ensemble.num_teachers == 3
    assert ensemble.widths == [384, 384, 48] and ensemble.depths == [6, 3, 2]
    # One head: a single pooling + dense parameter set; only the narrower RoBERTa has an adapter.
    assert ensemble.heads is None
    assert list(ensemble.head.adapters.keys()) == ["2"]
    head_params = {id(p) for p in ensemble.head.parameters()}
    encoder_params = {id(p) for p in ensemble.encoders.parameters()}
    assert not head_params & encoder_params
    n_dense = sum(1 for name, _ in ensemble.named_parameters() if name.endswith("dense.weight") and "head" in name)
    assert n_dense == 1

    inputs = [_batch(MINILM_L6), _batch(MINILM_L3), _batch(tiny_models["roberta"])]
    out = ensemble(inputs, hidden_layers=[[2, 6], [1, 3], [2]])
    assert out.logits.shape == (3, 2, 4)
    assert [len(h) for h in out.hidden_states] == [2, 2, 1]
    assert out.hidden_states[0][1].shape[-1] == 384 and out.hidden_states[2][0].shape[-1] == 48
    assert out.hidden_states[2][0].shape[1] == inputs[2]["input_ids"].shape[1]

    # The head is really shared: a change to its dense layer moves every teacher's logits.
    with torch.no_grad():
        before = ensemble(inputs).logits.clone()
        ensemble.head.dense.bias.add_(1.0)
        after = ensemble(inputs).logits
    assert torch.allclose(after - before, torch.ones_like(before), atol=1e-5)


def test_teacher_ensemble_without_shared_head_and_round_trip(tiny_models, tmp_path):
    names = [tiny_models["bert"], tiny_models["roberta"]]
    ensemble = TeacherEnsemble(names, num_labels=2, query_dim=8, shared_head=False).eval()
    assert ensemble.head is None and len(ensemble.heads) == 2
    inputs = [_batch(tiny_models["bert"]), _batch(tiny_models["roberta"])]
    ensemble.save_pretrained(tmp_path / "teachers")
    loaded = TeacherEnsemble.from_pretrained(tmp_path / "teachers").eval()
    assert loaded.names == names
    with torch.no_grad():
        assert torch.allclose(ensemble(inputs).logits, loaded(inputs).logits, atol=1e-6)


def test_gradients_reach_teachers_and_head_in_cofinetuning(tiny_models):
    ensemble = TeacherEnsemble([tiny_models["bert"], tiny_models["roberta"]], num_labels=2, query_dim=8)
    inputs = [_batch(tiny_models["bert"]), _batch(tiny_models["roberta"])]
    logits = ensemble(inputs).logits
    labels = torch.tensor([1, 0])
    loss = sum(torch.nn.functional.cross_entropy(logits[i], labels) for i in range(2))
    loss.backward()
    assert ensemble.head.dense.weight.grad.abs().sum() > 0
    for enc in ensemble.encoders:
        assert enc.embeddings.word_embeddings.weight.grad.abs().sum() > 0
