from __future__ import annotations

import pytest
import torch

from mtbert_ray.models.head import SharedHead
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.models.pooling import AttentivePooling


@pytest.mark.parametrize(
    "k,l,expected",
    [
        (6, 12, [2, 4, 6, 8, 10, 12]),  # the paper: T = 2
        (4, 12, [3, 6, 9, 12]),  # T = 3
        (3, 6, [2, 4, 6]),
        (2, 3, [2, 3]),  # 1.5 rounds half up
        (3, 12, [4, 8, 12]),
        (2, 6, [3, 6]),
        (4, 2, [1, 1, 2, 2]),  # K > L: a shallow teacher teaches several student layers
        (6, 3, [1, 1, 2, 2, 3, 3]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_layer_map(k, l, expected):
    assert layer_map(k, l) == expected


@pytest.mark.parametrize("k,l", [(k, l) for k in range(1, 13) for l in range(1, 25)])
def test_layer_map_properties(k, l):
    m = layer_map(k, l)
    assert len(m) == k and m[-1] == l and min(m) >= 1
    assert all(a <= b for a, b in zip(m, m[1:]))
    if l % k == 0:
        assert m == [(l // k) * j for j in range(1, k + 1)]


@pytest.mark.parametrize("k,l,expected", [(2, 6, [5, 6]), (2, 12, [11, 12]), (3, 3, [1, 2, 3]), (4, 2, [1, 1, 1, 2])])
def test_last_layer_map_takes_the_teachers_top_layers(k, l, expected):
    assert layer_map(k, l, "last") == expected
    with pytest.raises(ValueError, match="kind must be"):
        layer_map(k, l, "middle")


def test_layer_map_rejects_zero():
    with pytest.raises(ValueError, match="student_layers"):
        layer_map(0, 12)


def test_pooling_ignores_appended_padding():
    torch.manual_seed(0)
    pool = AttentivePooling(16, query_dim=8)
    hidden = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    out = pool(hidden, mask)
    padded = torch.cat([hidden, 1e4 * torch.randn(3, 7, 16)], dim=1)  # huge garbage in the padding
    padded_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.long)], dim=1)
    assert out.shape == (3, 16)
    assert torch.allclose(pool(padded, padded_mask), out, atol=1e-6)
    # Row 2 has one real token: the output is exactly that token's state.
    assert torch.allclose(out[2], hidden[2, 0], atol=1e-6)


def test_pooling_weights_sum_to_one_and_are_stable_for_large_scores():
    pool = AttentivePooling(4, query_dim=3)
    with torch.no_grad():
        pool.query.weight.fill_(1e6)  # scores of order 1e6: a naive exp overflows
    hidden = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    w = pool.attention_weights(hidden, mask)
    assert torch.isfinite(w).all()
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert (w[0, 4:] == 0).all()


def test_pooling_fully_masked_row_is_an_error():
    pool = AttentivePooling(4, query_dim=3)
    with pytest.raises(ValueError, match="no real token"):
        pool(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_shared_head_adapters_only_where_width_differs():
    head = SharedHead(8, 3, query_dim=4, input_sizes=[8, 12, 8])
    assert set(head.adapters.keys()) == {"1"}
    assert head(torch.randn(2, 5, 12), torch.ones(2, 5), source=1).shape == (2, 3)
    assert head(torch.randn(2, 5, 8), torch.ones(2, 5), source=2).shape == (2, 3)
    with pytest.raises(ValueError, match="width 12"):
        head(torch.randn(2, 5, 12), torch.ones(2, 5), source=0)


def test_hidden_loss_teachers_are_selected_by_name_or_tokenizer():
    from mtbert_ray.common.errors import ConfigError
    from mtbert_ray.experiment.context import select_hidden_teachers

    teachers, toks = ["l6", "mpnet", "l3"], ["tok_a", "tok_b", "tok_a"]
    assert select_hidden_teachers("all", teachers, toks, "tok_a") == [0, 1, 2]
    assert select_hidden_teachers("same_tokenizer", teachers, toks, "tok_a") == [0, 2]
    assert select_hidden_teachers(["l3", "mpnet"], teachers, toks, "tok_a") == [1, 2], "in the teachers' order"
    with pytest.raises(ConfigError, match="loss.hidden_teachers: same_tokenizer selects none"):
        select_hidden_teachers("same_tokenizer", ["mpnet"], ["tok_b"], "tok_a")


@pytest.mark.parametrize("kind,expected", [("uniform", [[3, 6], [6, 12]]), ("last", [[5, 6], [11, 12]])])
def test_stages_map_each_teacher_by_the_configured_layer_map(tmp_path, kind, expected):
    """``loss.layer_map`` reaches the maps stage 3 and the cache use (``stages.with_teachers``), per teacher depth."""
    import json
    from types import SimpleNamespace

    from mtbert_ray.experiment.stages import with_teachers
    from mtbert_ray.models.teachers import ENSEMBLE_FILE

    folder = tmp_path / "teachers"
    for i, (width, depth) in enumerate([(384, 6), (768, 12)]):
        (folder / f"teacher_{i}").mkdir(parents=True)
        (folder / f"teacher_{i}" / "config.json").write_text(json.dumps({"hidden_size": width, "num_hidden_layers": depth}))
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"names": ["l6", "mpnet"], "shared_head": True}))
    config = SimpleNamespace(student=SimpleNamespace(num_layers=2), loss=SimpleNamespace(layer_map=kind))
    ctx = with_teachers(SimpleNamespace(config=config, with_updates=lambda **kw: kw), SimpleNamespace(path=folder))
    assert ctx["layer_maps"] == expected and ctx["teacher_depths"] == [6, 12]
