"""A sweep folder's results as an archive without models (``mtbert_ray.study.archive``): what it keeps, and bad archives."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.study.archive import archive_sweep, restore_archive


def _fake_sweep(root: Path) -> Path:
    sweep = root / "sweeps" / "study"
    files = {
        "mtbert_sweep.json": "{}", "experiment_state-x.json": "{}", "tuner.pkl": "pickle",
        "trial_a/result.json": "{}", "trial_a/params.json": "{}", "trial_a/params.pkl": "pickle",
        "trial_a/events.out.tfevents.1": "events",
        "runs/a/config.yaml": "name: a", "runs/a/result.json": "{}", "runs/a/predictions/test.tsv": "index\tprediction\n",
        "runs/a/student/model.safetensors": "weights", "runs/a/student/config.json": "{}",
        "runs/a/distill/checkpoint_000001/state.json": "{}", "runs/a/distill/history.jsonl": "{}",
    }
    for name, text in files.items():
        (sweep / name).parent.mkdir(parents=True, exist_ok=True)
        (sweep / name).write_text(text)
    return sweep


def test_an_archive_keeps_results_and_predictions_and_leaves_models_pickles_and_events_out(tmp_path):
    archive = archive_sweep(_fake_sweep(tmp_path / "a"), tmp_path / "out")
    assert archive == tmp_path / "out" / "study.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names == sorted(names) and set(names) == {
        "study/mtbert_sweep.json", "study/experiment_state-x.json", "study/trial_a/result.json", "study/trial_a/params.json",
        "study/runs/a/config.yaml", "study/runs/a/result.json", "study/runs/a/predictions/test.tsv"}
    restored = restore_archive(archive, tmp_path / "b")
    assert restored == tmp_path / "b" / "sweeps" / "study"
    assert (restored / "runs/a/predictions/test.tsv").read_text() == "index\tprediction\n"
    assert [p.name for p in (tmp_path / "b" / "sweeps").iterdir()] == ["study"], "no staging folder left behind"


def test_a_folder_that_is_no_sweep_is_not_archived(tmp_path):
    with pytest.raises(ResultsError, match="not a sweep folder"):
        archive_sweep(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tar(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members,message", [
    ({"study/mtbert_sweep.json": "{}", "../escape.txt": "x"}, "expected every member under study/"),
    ({"other/mtbert_sweep.json": "{}"}, "expected every member under study/"),
    ({"study/result.json": "{}"}, "holds no study/mtbert_sweep.json"),
])
def test_a_foreign_archive_is_refused_in_one_line_and_writes_nothing(tmp_path, members, message):
    archive = _tar(tmp_path / "study.tar.gz", members)
    with pytest.raises(ResultsError, match=message):
        restore_archive(archive, tmp_path / "storage")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "storage" / "sweeps" / "study").exists()
    assert not list((tmp_path / "storage").rglob("*.restoring"))


def test_a_damaged_archive_is_one_line_naming_it(tmp_path):
    archive = tmp_path / "study.tar.gz"
    archive.write_bytes(b"not gzip")
    with pytest.raises(ResultsError, match=r"study\.tar\.gz: not a readable sweep archive"):
        restore_archive(archive, tmp_path / "storage")
    with pytest.raises(ResultsError, match=r"expected a sweep archive \(\*\.tar\.gz\)"):
        restore_archive(tmp_path / "study.zip", tmp_path / "storage")


def test_a_restore_never_overwrites_a_sweep_that_is_there(tmp_path):
    archive = archive_sweep(_fake_sweep(tmp_path / "a"), tmp_path / "out")
    there = tmp_path / "b" / "sweeps" / "study"
    there.mkdir(parents=True)
    (there / "mine.txt").write_text("mine")
    assert restore_archive(archive, tmp_path / "b") is None
    assert [p.name for p in there.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_a_link_member_is_refused_even_when_it_points_at_a_sibling_sweep(tmp_path, kind):
    """``analysis -> ../other/analysis`` stays inside the storage folder, so a filter checking the staging folder kept
    it, and the analysis then wrote into the other sweep: every link (and special file) is refused, nothing unpacked."""
    other = tmp_path / "storage" / "sweeps" / "other" / "analysis"
    other.mkdir(parents=True)
    (other / "table.md").write_text("the other sweep's table")
    archive = tmp_path / "study.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("study/mtbert_sweep.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("study/analysis")
        link.type = kind
        link.linkname = "../other/analysis" if kind == tarfile.SYMTYPE else ("study/mtbert_sweep.json" if kind == tarfile.LNKTYPE else "")
        tar.addfile(link)
    with pytest.raises(ResultsError, match=r"study.tar.gz: member study/analysis is a (link|special file).*; a sweep archive "
                                           r"holds only files and folders"):
        restore_archive(archive, tmp_path / "storage")
    assert not (tmp_path / "storage" / "sweeps" / "study").exists()
    assert (other / "table.md").read_text() == "the other sweep's table"
