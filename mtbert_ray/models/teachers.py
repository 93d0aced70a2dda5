"""N pretrained teacher encoders with one shared attentive-pooling + dense head (MT-BERT §2.1)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn
from transformers import PreTrainedModel

from mtbert_ray.models.head import SharedHead
from mtbert_ray.models.hub import encoder_depth, load_encoder

ENSEMBLE_FILE = "ensemble.json"
HEADS_FILE = "heads.safetensors"

#: Keys of a tokenizer's output that an encoder's forward takes.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TeacherOutput:
    """What the ensemble returns for one batch.

    logits: [N, B, C], one row per teacher.
    hidden_states: when requested, ``hidden_states[i][k]`` is teacher i's state after layer
        ``layers[i][k]`` (1-based; 0 would be the embeddings), shape [B, L_i, H_i].
    """

    logits: torch.Tensor
    hidden_states: list[list[torch.Tensor]] | None = None


class TeacherEnsemble(nn.Module):
    """N Hugging Face encoders (each with its own tokenizer's inputs) and one ``SharedHead``.

    ``shared_head=False`` gives every teacher its own head instead: the paper's
    "w/o multi-teacher co-finetuning" ablation (each teacher finetuned alone).
    The shared head works at ``head_width`` (default: the first teacher's width); teachers of another
    width reach it through a per-teacher adapter ``nn.Linear(width, head_width)`` (see ``SharedHead``).
    """

    def __init__(
        self,
        teachers: Sequence[str] | Sequence[PreTrainedModel],
        num_labels: int,
        query_dim: int = 200,
        shared_head: bool = True,
        trust_remote_code: bool = False,
        head_width: int | None = None,
    ) -> None:
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("teachers: expected at least one teacher")
        encoders = [
            t if isinstance(t, PreTrainedModel) else load_encoder(t, trust_remote_code=trust_remote_code)
            for t in teachers
        ]
        self.names = [t if isinstance(t, str) else t.config.name_or_path for t in teachers]
        self.encoders = nn.ModuleList(encoders)
        self.num_labels = num_labels
        self.query_dim = query_dim
        self.shared_head = shared_head
        widths = self.widths
        self.head_width = int(head_width or widths[0])
        if shared_head:
            self.head = SharedHead(self.head_width, num_labels, query_dim, input_sizes=widths)
            self.heads = None
        else:
            self.head = None
            self.heads = nn.ModuleList(SharedHead(w, num_labels, query_dim) for w in widths)

    @property
    def num_teachers(self) -> int:
        return len(self.encoders)

    @property
    def widths(self) -> list[int]:
        return [int(e.config.hidden_size) for e in self.encoders]

    @property
    def depths(self) -> list[int]:
        return [encoder_depth(e) for e in self.encoders]

    def head_for(self, i: int) -> tuple[SharedHead, int]:
        """The head teacher i uses, and the input index it is known by in that head."""
        return (self.head, i) if self.shared_head else (self.heads[i], 0)

    def forward(
        self,
        inputs: Sequence[Mapping[str, torch.Tensor]],
        hidden_layers: Sequence[Sequence[int]] | None = None,
    ) -> TeacherOutput:
        """``inputs[i]`` is teacher i's tokenized batch (input_ids, attention_mask[, token_type_ids]).

        ``hidden_layers[i]`` lists the (1-based) layers of teacher i whose states to return.
        """
        if len(inputs) != self.num_teachers:
            raise ValueError(f"TeacherEnsemble: got inputs for {len(inputs)} teachers, expected {self.num_teachers}")
        want_hidden = hidden_layers is not None
        logits, states = [], []
        for i, (encoder, batch) in enumerate(zip(self.encoders, inputs)):
            feed = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
            out = encoder(**feed, output_hidden_states=want_hidden, return_dict=True)
            head, source = self.head_for(i)
            logits.append(head(out.last_hidden_state, batch["attention_mask"], source=source))
            if want_hidden:
                states.append([out.hidden_states[layer] for layer in hidden_layers[i]])
        return TeacherOutput(torch.stack(logits), states if want_hidden else None)

    def teacher_logits(self, i: int, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Teacher i alone as a classifier: its encoder and its (shared) head → logits [B, C]."""
        feed = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        out = self.encoders[i](**feed, return_dict=True)
        head, source = self.head_for(i)
        return head(out.last_hidden_state, batch["attention_mask"], source=source)

    # ---- Hugging Face-style persistence -------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """``teacher_<i>/`` (each encoder's ``save_pretrained``), the head(s) in safetensors, ``ensemble.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, encoder in enumerate(self.encoders):
            encoder.save_pretrained(folder / f"teacher_{i}")
        heads = self.head if self.shared_head else self.heads
        save_model(heads, str(folder / HEADS_FILE))
        meta = {
            "names": self.names,
            "num_labels": self.num_labels,
            "query_dim": self.query_dim,
            "shared_head": self.shared_head,
            "head_width": self.head_width,
        }
        (folder / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, trust_remote_code: bool = False) -> "TeacherEnsemble":
        folder = Path(folder)
        meta = json.loads((folder / ENSEMBLE_FILE).read_text())
        encoders = [
            load_encoder(str(folder / f"teacher_{i}"), trust_remote_code=trust_remote_code)
            for i in range(len(meta["names"]))
        ]
        model = cls(encoders, meta["num_labels"], meta["query_dim"], meta["shared_head"], head_width=meta.get("head_width"))
        model.names = list(meta["names"])
        load_model(model.head if model.shared_head else model.heads, str(folder / HEADS_FILE))
        return model


def read_ensemble_meta(folder: str | Path) -> dict:
    """``ensemble.json`` of a saved ensemble plus each teacher's width and depth (no weights loaded)."""
    folder = Path(folder)
    meta = json.loads((folder / ENSEMBLE_FILE).read_text())
    widths, depths = [], []
    for i in range(len(meta["names"])):
        config = json.loads((folder / f"teacher_{i}" / "config.json").read_text())
        widths.append(int(config["hidden_size"]))
        depths.append(int(config.get("num_hidden_layers", config.get("n_layers", 0))))
    return {**meta, "widths": widths, "depths": depths}


def load_head_states(folder: str | Path) -> list[dict[str, torch.Tensor]]:
    """The saved head state dict(s) of an ensemble, one per teacher (the same dict for a shared head)."""
    folder = Path(folder)
    meta = json.loads((folder / ENSEMBLE_FILE).read_text())
    state = load_file(str(folder / HEADS_FILE))
    n = len(meta["names"])
    if meta["shared_head"]:
        return [state] * n
    return [{k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")} for i in range(n)]
