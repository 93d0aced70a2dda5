"""The closed-form W fit under DDP: every rank solves the same least-squares system over every rank's rows (two gloo
processes, torch alone: ``DistillModule._fit`` is the code under test), so the maps agree across ranks and equal the
fit of one process that saw all the rows; a rank's own rows alone give another map."""
from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mtbert_ray.core.steps.distill import DistillModule
from mtbert_ray.models.projection import build_projections

ROWS, TOKENS, STUDENT_WIDTH, TEACHER_WIDTH, LAYERS = 6, 5, 8, 6, 2


class _Student(nn.Module):
    """The part of ``StudentModel`` the fit calls: ``forward_batch`` → logits and the states of every layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(40, STUDENT_WIDTH)
        self.layers = nn.ModuleList(nn.Linear(STUDENT_WIDTH, STUDENT_WIDTH) for _ in range(LAYERS))

    def forward_batch(self, inputs, output_hidden_states=False):
        states = [self.embed(inputs["input_ids"])]
        for layer in self.layers:
            states.append(torch.tanh(layer(states[-1])))
        return SimpleNamespace(logits=states[-1].mean(1)[:, :2], hidden_states=states)


def _rank_batch(rank: int):
    """Rank ``rank``'s rows: token ids, a mask with padding, and one teacher's states of each student layer."""
    generator = torch.Generator().manual_seed(10 + rank)
    ids = torch.randint(0, 40, (ROWS, TOKENS), generator=generator)
    mask = torch.ones(ROWS, TOKENS, dtype=torch.long)
    mask[::2, -2:] = 0
    states = [[torch.randn(ROWS, TOKENS, TEACHER_WIDTH, generator=generator) for _ in range(LAYERS)]]
    return {"input_ids": ids, "attention_mask": mask}, states


def _fitted_maps(inputs, states) -> list[torch.Tensor]:
    torch.manual_seed(1)
    module = DistillModule(_Student(), build_projections([TEACHER_WIDTH], STUDENT_WIDTH, LAYERS, init="least_squares"),
                           fit_pending=[0], fit_rows=2 * ROWS)
    module(inputs, states)
    return [torch.cat([lin.weight.detach().flatten(), lin.bias.detach()]) for lin in module.projections[0]]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out[rank] = _fitted_maps(*_rank_batch(rank))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_fit_the_same_maps_as_one_process_over_all_rows():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    batches = [_rank_batch(rank) for rank in range(2)]
    inputs = {k: torch.cat([b[0][k] for b in batches]) for k in batches[0][0]}
    states = [[torch.cat([b[1][0][j] for b in batches]) for j in range(LAYERS)]]
    together = _fitted_maps(inputs, states)
    for j in range(LAYERS):
        assert torch.allclose(out[0][j], out[1][j], atol=1e-6), "both ranks hold one map"
        assert torch.allclose(out[0][j], together[j], atol=1e-4), "the map of all ranks' rows"
    alone = _fitted_maps(*batches[0])
    assert not torch.allclose(alone[0], together[0], atol=1e-2), "a rank's own rows give another map: the test can fail"
