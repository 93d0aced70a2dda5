"""Security defaults: no remote code unless asked (and then a warning), nothing unpickled from
checkpoints, the embedded Ray dashboard on 127.0.0.1 only, configs read with ``yaml.safe_load``."""
from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import read_yaml


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_remote_code_is_off_unless_asked_and_then_warned(tiny_models, monkeypatch):
    from transformers import AutoConfig

    from mtbert_ray.models import hub

    seen = []
    real = AutoConfig.from_pretrained

    def spy(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(name, **kwargs)

    monkeypatch.setattr(hub.AutoConfig, "from_pretrained", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning by default
        hub.load_config(tiny_models["bert"])
    with pytest.warns(UserWarning, match="trust_remote_code is on: code shipped with"):
        hub.load_config(tiny_models["bert"], trust_remote_code=True)
    assert seen == [False, True]


def test_optimizer_state_is_read_without_unpickling_objects(tmp_path):
    from mtbert_ray.core.training import OPTIMIZER_FILE, TRAINING_STATE, load_training_state

    torch.save({"state": {}, "param_groups": [], "payload": _Payload()}, tmp_path / OPTIMIZER_FILE)
    (tmp_path / TRAINING_STATE).write_text('{"epoch": 0}')
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_state(tmp_path, optimizer)


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("teachers: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="exp.yaml: line 1 invalid YAML"):
        read_yaml(path)


@pytest.mark.slow
def test_the_embedded_ray_dashboard_listens_on_localhost_only(ray_session):
    import ray

    url = ray._private.worker.get_dashboard_url()
    assert url.split(":")[0] == "127.0.0.1", url


def test_the_one_yaml_loader_is_a_safe_loader():
    """``config.UniqueKeyLoader`` (used for every config, space and cluster file) is a ``SafeLoader``: a Python tag
    that would run code is a one-line YAML error, not an object."""
    import tempfile
    from pathlib import Path

    import yaml

    from mtbert_ray.config import UniqueKeyLoader

    assert issubclass(UniqueKeyLoader, yaml.SafeLoader)
    path = Path(tempfile.mkdtemp()) / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml: line 1 invalid YAML"):
        read_yaml(path)
