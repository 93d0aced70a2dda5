"""One ``mtbert-ray`` command: every subcommand with its --help from the parser its ``python -m`` form uses, the keys
``--set`` takes, moved config keys that still read, and the registries that make an extension one file."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pandas as pd
import pytest

from mtbert_ray.cli import main as cli_main
from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import DATA_SOURCES, ExperimentConfig, validate_config
from tests.conftest import REPO

BASE = {"teachers": ["a"], "student": {"init_from": "a", "num_layers": 1},
        "data": {"source": "files", "path": "/x", "text_fields": ["s"]}}


def test_every_subcommand_has_help_and_runs_from_one_command(capsys):
    names = [c.NAME for c in cli_main.COMMANDS]
    assert names == ["run", "sweep", "analysis", "predict", "export", "serve", "data", "device-check"]
    with pytest.raises(SystemExit) as done:
        cli_main.main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    assert all(name in top for name in names)
    for name in names:
        with pytest.raises(SystemExit) as done:
            cli_main.main([name, "--help"])
        assert done.value.code == 0, name
        assert "usage: mtbert-ray " + name in capsys.readouterr().out


def test_a_subcommand_and_its_python_m_form_share_one_parser():
    """The same flags and the same one-line error: ``mtbert-ray sweep`` and ``python -m mtbert_ray.sweep``."""
    outs = [subprocess.run([sys.executable, "-m", *form, "--num-samples", "0", "--space", "x.yaml"], capture_output=True,
                           text=True, cwd=REPO, timeout=120) for form in (["mtbert_ray", "sweep"], ["mtbert_ray.sweep"])]
    for out in outs:
        assert out.returncode == 2
        assert out.stderr.strip().splitlines()[-1] == "error: --num-samples: expected a positive integer, got 0"


def test_list_keys_prints_every_settable_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main.main(["run", "--list-keys"])
    assert done.value.code == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out}
    assert "loss.temperature" in rows and "float" in rows["loss.temperature"] and " 1.0 " in rows["loss.temperature"]
    assert "resources.precision" in rows and "fp32 | bf16 | fp16" in rows["resources.precision"]
    assert "distill.temperature" not in rows
    assert len(rows) == len(out) > 60


@pytest.mark.parametrize("old,new,value", [("temperature", "temperature", 3.0), ("t2_scale", "t2_scale", True)])
def test_a_moved_key_still_reads_with_one_warning(old, new, value):
    with pytest.warns(FutureWarning, match=f"distill.{old} is deprecated: write loss.{new}"):
        cfg = validate_config({**BASE, "distill": {old: value}})
    assert getattr(cfg.loss, new) == value and old not in type(cfg.distill).model_fields
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(validate_config({**BASE, "loss": {new: value}}).loss, new) == value


def test_a_moved_key_given_twice_with_two_values_is_refused():
    with pytest.raises(ConfigError, match=r"distill.temperature \(2.0\) and loss.temperature \(3.0\) are both set"):
        validate_config({**BASE, "distill": {"temperature": 2.0}, "loss": {"temperature": 3.0}})


def test_a_new_data_source_is_one_registered_function(tmp_path):
    """``register_source`` makes ``data.source: NAME`` valid, with its needs, and ``load_source`` reads through it."""
    from mtbert_ray.data.sources import SOURCES, RawDataset, load_source, register_source

    frame = pd.DataFrame({"sentence": ["good", "bad", "fine", "awful"], "label": [1, 0, 1, 0]})
    for split in ("train", "validation"):
        frame.to_csv(tmp_path / f"{split}.csv", index=False)

    @register_source("csv_folder_for_test", needs=("path",))
    def read(cfg) -> RawDataset:
        files_cfg = cfg.model_copy(update={"source": "files", "text_fields": ["sentence"]})
        dataset = SOURCES["files"](files_cfg)
        dataset.name = "csv-test"
        return dataset

    try:
        with pytest.raises(ConfigError, match="data.source 'csv_folder_for_test' needs data.path"):
            validate_config({**BASE, "data": {"source": "csv_folder_for_test"}})
        cfg = validate_config({**BASE, "data": {"source": "csv_folder_for_test", "path": str(tmp_path)}})
        raw = load_source(cfg.data)
        assert raw.name == "csv-test" and raw.label_names == ["0", "1"] and len(raw.splits["train"].frame) == 4
    finally:
        SOURCES.pop("csv_folder_for_test")
        DATA_SOURCES.pop("csv_folder_for_test")


def test_the_config_knows_exactly_the_registered_sources():
    from mtbert_ray.data.sources import SOURCES

    assert set(SOURCES) == set(DATA_SOURCES) == {"glue", "mind", "files"}
    assert ExperimentConfig.model_fields["data"].annotation.model_fields["source"].default == "files"
