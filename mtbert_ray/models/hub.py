"""Loading encoders and tokenizers the Hugging Face way (hub id or local folder), safely.

Works offline with ``HF_HUB_OFFLINE=1`` and a populated ``HF_HUB_CACHE``; never enables
``trust_remote_code`` unless the caller asks for it.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mtbert_ray.common.errors import MTBertError

log = logging.getLogger(__name__)


class ModelLoadError(MTBertError, ValueError):
    """A model or tokenizer could not be loaded (bad id, not in the offline cache, no fast tokenizer)."""


def _warn_remote_code(name: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        warnings.warn(f"trust_remote_code is on: code shipped with {name!r} will run on this machine", stacklevel=3)


def quiet_transformers() -> None:
    """No per-file progress bars from transformers (loading / saving weights) in stage processes: a stage
    prints its own progress lines, and a bar per checkpoint save is noise in a sweep's output. Tokenizers
    do not fork their thread pool in them either (they run in Ray's worker processes)."""
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_config(name_or_path: str, *, trust_remote_code: bool = False, **overrides: Any):
    """``AutoConfig.from_pretrained`` with a one-line error when the model cannot be found."""
    _warn_remote_code(name_or_path, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **overrides)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model {name_or_path!r}: cannot load its config ({_first_line(exc)}); "
            "expected a hub id (in HF_HUB_CACHE when HF_HUB_OFFLINE=1) or a folder with config.json"
        ) from exc


def load_encoder(name_or_path: str, *, num_layers: int | None = None, trust_remote_code: bool = False) -> PreTrainedModel:
    """A pretrained encoder without its task head (and without BERT's unused pooler where possible).

    ``num_layers=K`` keeps the embeddings and the first K Transformer layers: the config is
    loaded with ``num_hidden_layers=K`` and the checkpoint's layers 0..K-1 fill it (the deeper
    layers' weights are simply not loaded). This works for every encoder whose layers are a
    numbered stack (BERT, RoBERTa, MPNet, ELECTRA, DeBERTa, DistilBERT, …).
    """
    config = load_config(name_or_path, trust_remote_code=trust_remote_code)
    depth = model_depth(config, name_or_path)
    if num_layers is not None:
        if num_layers < 1:
            raise ModelLoadError(f"student.num_layers must be >= 1, got {num_layers}")
        if num_layers > depth:
            raise ModelLoadError(
                f"student.num_layers={num_layers} is deeper than {name_or_path!r}, which has {depth} layers"
            )
        config.num_hidden_layers = num_layers
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the truncated layers / unused pooler as "unexpected"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            return AutoModel.from_pretrained(
                name_or_path, config=config, add_pooling_layer=False, trust_remote_code=trust_remote_code
            )
        except TypeError:  # architectures without a pooler do not take add_pooling_layer
            return AutoModel.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"model {name_or_path!r}: cannot load its weights ({_first_line(exc)})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A *fast* tokenizer (character offsets are needed for cross-tokenizer alignment)."""
    _warn_remote_code(name_or_path, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"tokenizer of {name_or_path!r}: cannot load it ({_first_line(exc)}); "
            "expected a hub id (in HF_HUB_CACHE when HF_HUB_OFFLINE=1) or a folder with tokenizer files"
        ) from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(
            f"tokenizer of {name_or_path!r}: a fast (Rust) tokenizer is required for character offsets, got {type(tokenizer).__name__}"
        )
    return tokenizer


def encoder_depth(model: PreTrainedModel) -> int:
    """Number of Transformer layers of a loaded encoder."""
    return model_depth(model.config, getattr(model.config, "name_or_path", "model"))


def model_depth(config, name: str) -> int:
    """Number of Transformer layers a model config declares (one-line error when it declares none)."""
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ModelLoadError(f"model {name!r}: its config has no num_hidden_layers; expected a Transformer encoder")
    return depth


def check_models(teachers: list[str], student: str, student_layers: int, trust_remote_code: bool = False,
                 max_length: int | None = None) -> None:
    """Pre-flight: every teacher's and the student's config loads, a local model folder holds weights, the student
    fits its checkpoint and ``max_length`` fits every model's position embeddings.

    Reads only ``config.json`` files (hub cache or folder) and folder listings, so a missing model, a folder without
    weights, a student deeper than ``student.init_from`` or too long a ``data.max_length`` is a one-line error before
    any Ray worker starts.
    """
    for name in dict.fromkeys([*teachers, student]):
        config = load_config(name, trust_remote_code=trust_remote_code)
        depth = model_depth(config, name)
        check_weights(name)
        positions = usable_positions(config)
        if max_length is not None and positions is not None and max_length > positions:
            raise ModelLoadError(f"data.max_length={max_length} is longer than {name!r} takes ({positions} positions); "
                                 f"set data.max_length <= {positions}")
        if name == student and student_layers > depth:
            raise ModelLoadError(f"student.num_layers={student_layers} is deeper than {student!r}, which has {depth} layers")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: model types whose position ids start after the padding index (RoBERTa's ``create_position_ids_from_input_ids``)
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text", "bart"}


def check_weights(name: str) -> None:
    """A local model folder must hold weights (a hub id is fetched, or found in the cache, when it is loaded)."""
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(f"model {name!r}: the folder has a config.json but no weights "
                             f"(expected one of {', '.join(WEIGHT_FILES)})")


def usable_positions(config) -> int | None:
    """Tokens one sequence may hold: ``max_position_embeddings``, less the padding offset of RoBERTa-style models."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", None) or 1) + 1
    return positions


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
