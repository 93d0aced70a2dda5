"""Each loss against a straightforward reference written here, on random tensors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtbert_ray.core.losses import SoftLabels, ensemble_distill_loss, mt_distill_loss, mt_hidden_loss, task_loss, teacher_weights
from mtbert_ray.models.projection import build_projections

SHAPES = [(1, 4, 2), (2, 5, 3), (3, 7, 18)]  # (N teachers, batch, classes)
TEMPERATURES = [0.5, 1.0, 2.0, 4.0]


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def _ref_ce(label, logits):
    return -math.log(_softmax(logits)[label])


def _ref_weights(teacher_logits, labels):
    n, b, _ = teacher_logits.shape
    return [[1.0 / (1.0 + _ref_ce(int(labels[j]), teacher_logits[i, j].tolist())) for j in range(b)] for i in range(n)]


def _ref_soft_ce(target_logits, student_logits, t):
    p = _softmax([x / t for x in target_logits])
    q = _softmax([x / t for x in student_logits])
    return -sum(pc * math.log(qc) for pc, qc in zip(p, q))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def _random(gen, n, b, c):
    teacher = torch.randn(n, b, c, generator=gen, dtype=torch.float64) * 3
    student = torch.randn(b, c, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c, (b,), generator=gen)
    return teacher, student, labels


@pytest.mark.parametrize("n,b,c", SHAPES)
def test_task_loss_matches_reference(gen, n, b, c):
    _, student, labels = _random(gen, n, b, c)
    ref = sum(_ref_ce(int(labels[j]), student[j].tolist()) for j in range(b)) / b
    assert task_loss(student, labels).item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("n,b,c", SHAPES)
def test_teacher_weights_match_reference_and_are_detached(gen, n, b, c):
    teacher, _, labels = _random(gen, n, b, c)
    teacher.requires_grad_(True)
    w = teacher_weights(teacher, labels)
    assert w.shape == (n, b)
    assert not w.requires_grad
    ref = _ref_weights(teacher.detach(), labels)
    assert w.flatten().tolist() == pytest.approx([x for row in ref for x in row], rel=1e-9)
    assert bool(((w > 0) & (w <= 1)).all())


@pytest.mark.parametrize("n,b,c", SHAPES)
@pytest.mark.parametrize("t", TEMPERATURES)
@pytest.mark.parametrize("weighted", [True, False])
def test_mt_distill_loss_matches_reference(gen, n, b, c, t, weighted):
    teacher, student, labels = _random(gen, n, b, c)
    weights = _ref_weights(teacher, labels) if weighted else [[1.0] * b for _ in range(n)]
    ref = sum(
        sum(weights[i][j] * _ref_soft_ce(teacher[i, j].tolist(), student[j].tolist(), t) for j in range(b)) / b
        for i in range(n)
    )
    got = mt_distill_loss(student, teacher, labels, SoftLabels(temperature=t, weighted=weighted))
    assert got.item() == pytest.approx(ref, rel=1e-9)
    scaled = mt_distill_loss(student, teacher, labels, SoftLabels(temperature=t, weighted=weighted, t2_scale=True))
    assert scaled.item() == pytest.approx(ref * t * t, rel=1e-9)


def test_mt_distill_loss_without_labels_is_unweighted(gen):
    teacher, student, labels = _random(gen, 2, 6, 3)
    assert mt_distill_loss(student, teacher, None).item() == pytest.approx(
        mt_distill_loss(student, teacher, labels, SoftLabels(weighted=False)).item(), rel=1e-12
    )


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_temperature_must_be_positive(gen, bad):
    teacher, student, labels = _random(gen, 2, 3, 2)
    with pytest.raises(ValueError, match="temperature"):
        mt_distill_loss(student, teacher, labels, SoftLabels(temperature=bad))


@pytest.mark.parametrize("n,b,c", SHAPES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_ensemble_losses_match_reference(gen, n, b, c, t):
    teacher, student, labels = _random(gen, n, b, c)
    w = _ref_weights(teacher, labels)
    avg_ref = weighted_ref = 0.0
    for j in range(b):
        probs = [_softmax([x / t for x in teacher[i, j].tolist()]) for i in range(n)]
        q = _softmax([x / t for x in student[j].tolist()])
        avg = [sum(p[k] for p in probs) / n for k in range(c)]
        alpha = [w[i][j] / sum(w[k][j] for k in range(n)) for i in range(n)]
        mix = [sum(alpha[i] * probs[i][k] for i in range(n)) for k in range(c)]
        avg_ref += -sum(avg[k] * math.log(q[k]) for k in range(c)) / b
        weighted_ref += -sum(mix[k] * math.log(q[k]) for k in range(c)) / b
    assert ensemble_distill_loss(student, teacher, labels, SoftLabels(temperature=t, ensemble="average")).item() == pytest.approx(avg_ref, rel=1e-9)
    logit_ref = 0.0
    for j in range(b):
        mean = [sum(teacher[i, j, k].item() for i in range(n)) / n for k in range(c)]
        p = _softmax([x / t for x in mean])
        q = _softmax([x / t for x in student[j].tolist()])
        logit_ref += -sum(p[k] * math.log(q[k]) for k in range(c)) / b
    logits_soft, weighted_soft = SoftLabels(temperature=t, ensemble="average_logits"), SoftLabels(temperature=t, ensemble="weighted")
    assert ensemble_distill_loss(student, teacher, labels, logits_soft).item() == pytest.approx(logit_ref, rel=1e-9)
    assert ensemble_distill_loss(student, teacher, labels, weighted_soft).item() == pytest.approx(weighted_ref, rel=1e-9)


def test_ensemble_mode_is_checked(gen):
    teacher, student, labels = _random(gen, 2, 3, 2)
    with pytest.raises(ValueError, match="mode"):
        ensemble_distill_loss(student, teacher, labels, SoftLabels(ensemble="median"))
    with pytest.raises(ValueError, match="labels"):
        ensemble_distill_loss(student, teacher, None, SoftLabels(ensemble="weighted"))


def _ref_hidden(student_states, teacher_states, projections, mask):
    total = 0.0
    for states_i, proj_i in zip(teacher_states, projections):
        for h_s, h_t, w in zip(student_states, states_i, proj_i):
            target = (h_t @ w.weight.T + w.bias).detach()
            acc, count = 0.0, 0
            for bi in range(h_s.shape[0]):
                for li in range(h_s.shape[1]):
                    if mask[bi, li]:
                        acc += ((h_s[bi, li] - target[bi, li]) ** 2).sum().item()
                        count += h_s.shape[2]
            total += acc / count
    return total


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_mt_hidden_loss_matches_reference_and_gradients_flow(gen, n, k):
    b, length, hs = 3, 6, 8
    widths = [8, 12, 16][:n]
    student_states = [torch.randn(b, length, hs, generator=gen, requires_grad=True) for _ in range(k)]
    teacher_states = [[torch.randn(b, length, w, generator=gen, requires_grad=True) for _ in range(k)] for w in widths]
    projections = build_projections(widths, hs, k)
    for proj_i in projections:  # move off the identity start so the reference check is not trivial
        for w in proj_i:
            with torch.no_grad():
                w.weight.add_(0.1 * torch.randn(w.weight.shape, generator=gen))
                w.bias.add_(0.1 * torch.randn(w.bias.shape, generator=gen))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    loss = mt_hidden_loss(student_states, teacher_states, projections, mask)
    assert loss.item() == pytest.approx(_ref_hidden(student_states, teacher_states, projections, mask), rel=1e-5)

    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student_states)
    for proj_i in projections:
        assert all(w.weight.grad is not None and w.weight.grad.abs().sum() > 0 for w in proj_i)
    assert all(t.grad is None for states_i in teacher_states for t in states_i), "a gradient reached a teacher"
    # Padding positions contribute nothing: changing them leaves the loss unchanged.
    for s in student_states:
        with torch.no_grad():
            s[0, 4:] += 100.0
    assert mt_hidden_loss(student_states, teacher_states, projections, mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_projections_start_at_identity_when_widths_match():
    projections = build_projections([8, 12], 8, 2)
    assert torch.equal(projections[0][1].weight, torch.eye(8))
    assert projections[1][0].weight.shape == (8, 12)
    assert not torch.equal(projections[1][0].weight, torch.zeros(8, 12))
    student_side = build_projections([12], 8, 1, project="student")
    assert student_side[0][0].weight.shape == (12, 8)


def test_project_student_side(gen):
    h_s = [torch.randn(2, 3, 4, generator=gen)]
    h_t = [[torch.randn(2, 3, 6, generator=gen)]]
    w = build_projections([6], 4, 1, project="student")
    ref = ((w[0][0](h_s[0]) - h_t[0][0]) ** 2).mean()
    assert mt_hidden_loss(h_s, h_t, w, project="student").item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("fn", ["distill", "ensemble_avg", "ensemble_weighted", "task"])
def test_soft_label_losses_send_gradients_to_student_only(gen, fn):
    teacher = nn.Parameter(torch.randn(3, 5, 4, generator=gen))
    student = nn.Parameter(torch.randn(5, 4, generator=gen))
    labels = torch.randint(0, 4, (5,), generator=gen)
    loss = {
        "distill": lambda: mt_distill_loss(student, teacher, labels, SoftLabels(temperature=2.0)),
        "ensemble_avg": lambda: ensemble_distill_loss(student, teacher, labels, SoftLabels(temperature=2.0, ensemble="average")),
        "ensemble_weighted": lambda: ensemble_distill_loss(student, teacher, labels, SoftLabels(temperature=2.0, ensemble="weighted")),
        "task": lambda: task_loss(student, labels) + 0 * teacher.sum().detach(),
    }[fn]()
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_least_squares_map_recovers_a_linear_map():
    from mtbert_ray.models.projection import least_squares_map

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    x = torch.randn(400, 5, generator=g)
    weight, bias = least_squares_map(x, x @ a.T + b, ridge=1e-9)
    assert torch.allclose(weight, a, atol=1e-4) and torch.allclose(bias, b, atol=1e-4)


def test_projection_plan_and_a_fitted_start_beats_a_random_one():
    from mtbert_ray.models.projection import build_projections, fit_projection, projection_plan

    assert projection_plan([384, 768], 384, "auto") == ["identity", "least_squares"]
    assert projection_plan([384, 768], 384, "identity") == ["identity", "xavier"]  # identity needs equal widths
    assert projection_plan([768], 384, "xavier") == ["xavier"]
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 9, 12, generator=g)
    student = teacher @ torch.randn(12, 6, generator=g) * 0.5 + 0.1 * torch.randn(4, 9, 6, generator=g)
    mask = torch.ones(4, 9)
    mask[0, 5:] = 0
    projections = build_projections([12], 6, 1, "teacher", "xavier")
    random_start = mt_hidden_loss([student], [[teacher]], projections, mask).item()
    fit_projection(projections[0][0], teacher, student, mask)
    fitted = mt_hidden_loss([student], [[teacher]], projections, mask).item()
    assert fitted < 0.1 * random_start, (fitted, random_start)


def test_objective_weights_each_term_and_reports_it_unweighted(gen):
    """L = λ_hid·L_hid + λ_dis·L_dis + λ_task·L_task; the terms are reported as computed (history, logs), the sum
    weighted; λ = 1 (the default) is the paper's plain sum."""
    from mtbert_ray.config import LossConfig
    from mtbert_ray.core.objective import mt_bert_objective

    student, teachers = torch.randn(4, 2, generator=gen), torch.randn(3, 4, 2, generator=gen)
    labels, hidden = torch.tensor([0, 1, 1, 0]), torch.tensor(0.7)
    plain = mt_bert_objective(student, labels, teachers, LossConfig(hidden=True), hidden=hidden)
    assert plain["loss"] == pytest.approx(float(plain["hidden"] + plain["distill"] + plain["task"]))
    weighted = mt_bert_objective(student, labels, teachers, LossConfig(hidden=True, hidden_weight=0.1, distill_weight=2.0, task_weight=0.5),
                                 hidden=hidden)
    assert {k: float(v) for k, v in weighted.items() if k != "loss"} == {k: float(v) for k, v in plain.items() if k != "loss"}
    assert weighted["loss"] == pytest.approx(0.1 * 0.7 + 2.0 * float(plain["distill"]) + 0.5 * float(plain["task"]))
    with pytest.raises(ValueError, match="hidden_weight"):
        LossConfig(hidden_weight=0)


# ---- teacher mixtures (loss.teacher_weighting, loss.teacher_prior) ------------------------------------------------

def _mixture_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=g), torch.randn(3, 4, 3, generator=g) * 3, torch.tensor([0, 2, 1, 1])


def test_the_paper_mixture_is_eq2_exactly():
    from mtbert_ray.core.losses import mixture_weights, mt_distill_loss, teacher_weights

    student, teachers, labels = _mixture_case()
    assert torch.allclose(mixture_weights(teachers, labels, "paper", [1, 1, 1]), teacher_weights(teachers, labels))
    old = mt_distill_loss(student, teachers, labels, SoftLabels(temperature=2.0))
    assert torch.equal(mt_distill_loss(student, teachers, labels, SoftLabels(temperature=2.0, weighting="paper")), old)
    assert torch.allclose(mt_distill_loss(student, teachers, labels, SoftLabels(temperature=2.0, prior=[1, 1, 1])), old)


def test_normalized_and_confidence_mixtures_sum_to_one_teacher():
    from mtbert_ray.core.losses import mixture_weights, teacher_weights

    _, teachers, labels = _mixture_case(1)
    prior = [0.5, 0.3, 0.2]
    normalized = mixture_weights(teachers, labels, "normalized", prior)
    raw = torch.tensor(prior).view(3, 1) * teacher_weights(teachers, labels)
    assert torch.allclose(normalized, raw / raw.sum(0)) and torch.allclose(normalized.sum(0), torch.ones(4))
    confidence = mixture_weights(teachers, labels, "confidence", prior, confidence_temperature=0.5)
    ce = -torch.log_softmax(teachers, -1).gather(-1, labels.view(1, -1, 1).expand(3, -1, 1)).squeeze(-1)
    expected = torch.softmax(torch.log(torch.tensor(prior)).view(3, 1) - ce / 0.5, dim=0)
    assert torch.allclose(confidence, expected, atol=1e-6) and torch.allclose(confidence.sum(0), torch.ones(4))
    # a small τ gives (almost) all of a sample's weight to its most correct teacher
    sharp = mixture_weights(teachers, labels, "confidence", None, confidence_temperature=1e-3)
    assert torch.equal(sharp.argmax(0), ce.argmin(0)) and bool((sharp.max(0).values > 0.99).all())


def test_a_one_hot_prior_is_that_teachers_student():
    """normalized with α = e_k: L_MT-Dis is exactly the soft cross-entropy with teacher k alone."""
    from mtbert_ray.core.losses import mt_distill_loss, soft_cross_entropy

    student, teachers, labels = _mixture_case(2)
    for k in range(3):
        prior = [1.0 if i == k else 0.0 for i in range(3)]
        loss = mt_distill_loss(student, teachers, labels, SoftLabels(weighting="normalized", prior=prior))
        alone = soft_cross_entropy(student, torch.softmax(teachers[k], -1), 1.0).mean()
        assert torch.allclose(loss, alone, atol=1e-6)


def test_unlabelled_rows_take_the_priors_and_the_hidden_scale_follows_them():
    from mtbert_ray.core.losses import hidden_teacher_scale, mixture_weights

    _, teachers, _ = _mixture_case(3)
    assert torch.allclose(mixture_weights(teachers, None, "normalized", [2, 1, 1]), torch.tensor([[0.5], [0.25], [0.25]]).expand(3, 4))
    assert torch.allclose(mixture_weights(teachers, None, "paper"), torch.ones(3, 4))
    assert hidden_teacher_scale(None, [0, 1, 2], "paper") is None  # the paper: every teacher's MSE at weight 1
    assert hidden_teacher_scale([1, 1, 2], [0, 1, 2], "paper") == pytest.approx([0.75, 0.75, 1.5])
    assert hidden_teacher_scale([1, 1, 2], [0, 2], "normalized") == pytest.approx([1 / 3, 2 / 3])
    assert hidden_teacher_scale(None, [0, 1], "confidence") == pytest.approx([0.5, 0.5])


def test_the_hidden_loss_weighs_each_teacher_by_its_scale():
    from mtbert_ray.core.losses import mt_hidden_loss

    g = torch.Generator().manual_seed(4)
    student = [torch.randn(2, 5, 8, generator=g)]
    teachers = [[torch.randn(2, 5, 8, generator=g)], [torch.randn(2, 5, 8, generator=g)]]
    each = [mt_hidden_loss(student, [t], None) for t in teachers]
    assert torch.allclose(mt_hidden_loss(student, teachers, None, teacher_scale=[0.25, 0.75]), 0.25 * each[0] + 0.75 * each[1])
    assert torch.allclose(mt_hidden_loss(student, teachers, None), each[0] + each[1])


def test_moments_added_batch_by_batch_give_the_one_shot_fit():
    """The least-squares W fitted from sums over several batches equals the fit to all their rows at once."""
    from mtbert_ray.models.projection import Moments, least_squares_map

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 7, generator=g), torch.randn(300, 4, generator=g)
    once = least_squares_map(x, y)
    summed = Moments.of(x[:100], y[:100]).add(Moments.of(x[100:250], y[100:250])).add(Moments.of(x[250:], y[250:]))
    weight, bias = summed.solve()
    assert torch.allclose(weight.float(), once[0], atol=1e-5) and torch.allclose(bias.float(), once[1], atol=1e-5)


def test_unlabelled_rows_take_no_task_loss_and_teach_by_the_teachers_class(gen):
    """Rows labelled −1: the task loss is the mean over the labelled rows only; in L_MT-Dis an unlabelled row's
    correctness weights use the prior-weighted teachers' class, and the row weighs the mixture's confidence."""
    from mtbert_ray.config import LossConfig
    from mtbert_ray.core.losses import fill_unlabeled
    from mtbert_ray.core.objective import mt_bert_objective

    student = torch.randn(4, 3, generator=gen)
    teachers = torch.tensor([[[4.0, 0, 0], [0, 3.0, 0], [0, 0, 0.2], [1.0, 0, 0]],
                             [[3.0, 0, 0], [0, 0, 2.0], [0.1, 0, 0], [1.0, 0, 0]]])
    labels = torch.tensor([0, -1, -1, 2])
    assert task_loss(student, labels).item() == pytest.approx(task_loss(student[[0, 3]], labels[[0, 3]]).item())
    assert task_loss(student, torch.full((4,), -1)).item() == 0.0
    filled, weight = fill_unlabeled(teachers, labels)
    mixture = torch.softmax(teachers, -1).mean(0)
    assert filled.tolist() == [0, int(mixture[1].argmax()), int(mixture[2].argmax()), 2]
    assert weight[0] == 1 and weight[3] == 1
    assert weight[1].item() == pytest.approx(mixture[1].max().item()) and weight[2] < weight[1]  # row 2: unsure teachers
    assert fill_unlabeled(teachers, labels, rows="uniform")[1].tolist() == [1.0] * 4
    # a prior on teacher 2 alone makes its class the label: row 1 → class 2
    assert fill_unlabeled(teachers, labels, prior=[0.0, 1.0])[0][1].item() == 2
    terms = mt_bert_objective(student, labels, teachers, LossConfig(hidden=False))
    expected = mt_distill_loss(student, teachers, filled, row_weight=weight)
    assert terms["distill"].item() == pytest.approx(expected.item())
    assert terms["task"].item() == pytest.approx(task_loss(student[[0, 3]], labels[[0, 3]]).item())
    # called directly (a user's own loop), the loss fills unlabelled rows the same way
    assert mt_distill_loss(student, teachers, labels).item() == pytest.approx(expected.item())
