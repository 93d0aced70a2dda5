"""Cross-tokenizer alignment: map a teacher's token states onto the student's tokens.

Both tokenizations come from the same text, with *global* character offsets (in a pair,
the second text's offsets are shifted by ``len(text_a) + 1``; see
``mtbert_ray.data.tokenize.encode``). For student token s and teacher token t:

    A[b, s, t] = 1 / |O(s)|   if t ∈ O(s), else 0,
    O(s)       = content teacher tokens whose span [start, end) overlaps s's span,

so each student token averages the teacher tokens that overlap it (rows sum to 1).
Special tokens map to special tokens by rank: the r-th of the student's M_s special tokens
maps to the teacher's special token round_half_up(r · (M_t − 1) / (M_s − 1)) — [CLS]↔<s>,
final [SEP]↔</s>, and in a pair BERT's middle [SEP] ↔ RoBERTa's second </s>. A content token
with no overlapping teacher token (the teacher truncated earlier, or a zero-width token)
takes the nearest teacher content token by character distance. Padding rows are all zero.
Identical tokenizations give the identity on real tokens.
"""
from __future__ import annotations

import torch


def alignment_matrix(
    student_offsets: torch.Tensor,
    student_mask: torch.Tensor,
    student_special: torch.Tensor,
    teacher_offsets: torch.Tensor,
    teacher_mask: torch.Tensor,
    teacher_special: torch.Tensor,
) -> torch.Tensor:
    """A [B, Ls, Lt] (float32) from offsets [B, L, 2], attention masks [B, L] and special-token masks [B, L]."""
    s_real = student_mask.bool()
    t_real = teacher_mask.bool()
    s_spec = student_special.bool() & s_real
    t_spec = teacher_special.bool() & t_real
    s_content = s_real & ~s_spec
    t_content = t_real & ~t_spec

    s_start, s_end = student_offsets[..., 0].long(), student_offsets[..., 1].long()
    t_start, t_end = teacher_offsets[..., 0].long(), teacher_offsets[..., 1].long()
    lo = torch.maximum(s_start[:, :, None], t_start[:, None, :])
    hi = torch.minimum(s_end[:, :, None], t_end[:, None, :])
    pair_content = s_content[:, :, None] & t_content[:, None, :]
    links = (hi > lo) & pair_content

    # Content tokens with no overlap: nearest teacher content token by character distance.
    orphan = s_content & ~links.any(dim=-1)
    if bool(orphan.any()):
        gap = torch.maximum(t_start[:, None, :] - s_end[:, :, None], s_start[:, :, None] - t_end[:, None, :]).clamp(min=0)
        big = torch.iinfo(gap.dtype).max
        gap = gap.masked_fill(~pair_content, big)
        nearest = gap.argmin(dim=-1)  # [B, Ls]
        has_candidate = t_content.any(dim=-1)[:, None] & orphan
        fallback = torch.zeros_like(links)
        fallback.scatter_(-1, nearest[..., None], True)
        links = links | (fallback & has_candidate[..., None])

    links = links | _special_links(s_spec, t_spec)
    weights = links.float()
    totals = weights.sum(dim=-1, keepdim=True)
    return torch.where(totals > 0, weights / totals.clamp(min=1.0), weights)


def _special_links(s_spec: torch.Tensor, t_spec: torch.Tensor) -> torch.Tensor:
    """[B, Ls, Lt] bool: the r-th student special token ↔ the teacher special of rank round(r·(Mt−1)/(Ms−1))."""
    s_rank = torch.cumsum(s_spec.long(), dim=-1) - 1  # rank among specials (valid where s_spec)
    t_rank = torch.cumsum(t_spec.long(), dim=-1) - 1
    m_s = s_spec.long().sum(dim=-1, keepdim=True)  # [B, 1]
    m_t = t_spec.long().sum(dim=-1, keepdim=True)
    denom = (m_s - 1).clamp(min=1)
    target = (2 * s_rank * (m_t - 1) + denom) // (2 * denom)  # round half up
    target = torch.where(m_s > 1, target, torch.zeros_like(target))
    links = (target[:, :, None] == t_rank[:, None, :]) & s_spec[:, :, None] & t_spec[:, None, :]
    return links


def alignment_from_batches(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """``alignment_matrix`` from two tokenized batches with keys offsets, attention_mask, special_tokens_mask."""
    return alignment_matrix(
        student["offsets"], student["attention_mask"], student["special_tokens_mask"],
        teacher["offsets"], teacher["attention_mask"], teacher["special_tokens_mask"],
    )


def align_states(teacher_states: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
    """Teacher states [B, Lt, H] seen from the student's tokens: A @ H → [B, Ls, H]."""
    return torch.bmm(alignment.to(teacher_states.dtype), teacher_states)
