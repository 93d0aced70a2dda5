"""The student outside mtbert-ray: format-1 folders converted (never loaded with a random head), the card, and Ray Serve."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from mtbert_ray.deploy.classifier import StudentClassifier
from mtbert_ray.deploy.export import convert_student
from mtbert_ray.models.student_io import is_transformers_student
from tests.tiny_models import make_tiny_student

TEXTS = ["a fine film", "dull", "the plot is thin but the actors carry it"]


def test_a_format1_folder_is_converted_with_its_predictions_and_kept(tiny_models, tmp_path):
    """``export convert`` in place: the new folder is a transformers student with the same probabilities (3 classes,
    its own label names) and the old files are kept beside it, never deleted."""
    from transformers import AutoModelForSequenceClassification

    old = make_tiny_student(tmp_path / "student", tiny_models["bert"], ("neg", "neu", "pos"))
    before = StudentClassifier.from_pretrained(old).predict_proba(TEXTS)
    converted = convert_student(old)
    assert converted == old and is_transformers_student(old) and (tmp_path / "student.format1" / "head.safetensors").is_file()
    after = StudentClassifier.from_pretrained(old)
    assert after.label_names == ["neg", "neu", "pos"] and (after.predict_proba(TEXTS) - before).abs().max() <= 1e-6
    native = AutoModelForSequenceClassification.from_pretrained(old).eval()
    assert native.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    import torch

    enc = after.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(native(**enc).logits, -1)
    assert (probs - before).abs().max() <= 1e-6
    with pytest.raises(Exception, match="already a transformers student"):
        convert_student(old)


def test_the_card_parses_and_says_what_the_student_is(tiny_models, tmp_path):
    from huggingface_hub import ModelCard

    from mtbert_ray.deploy.card import write_model_card
    from mtbert_ray.models.student_io import read_student_meta

    folder = convert_student(make_tiny_student(tmp_path / "old", tiny_models["bert"]), tmp_path / "student")
    result = {"select": {"metric": "accuracy", "mode": "max"},
              "stages": {"distill": {"metrics": {"accuracy": 0.8125, "epoch": 2}, "test": {"accuracy": 0.75}}},
              "params": {"student": 12345}}
    speed = {"torch fp32": {"p50_ms": 2.0, "p95_ms": 3.0, "batch8_rows_per_s": 400.0, "batch32_rows_per_s": 1900.0},
             "teacher x": {"p50_ms": 9.0, "p95_ms": 9.5, "batch32_rows_per_s": 300.0}}  # an older report: no batch 8
    write_model_card(folder, read_student_meta(folder), result, speed, seeds={"test accuracy": "0.74 ± 0.02 (5 seeds)"})
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "knowledge-distillation" in card.data.tags
    for text in ("`negative`, `positive`", "validation: accuracy 0.8125", "test: accuracy 0.7500", "parameters: 12,345",
                 "| torch fp32 | 2.00 | 3.00 | 400 | 1,900 |",
                 "| teacher x | 9.00 | 9.50 | — | 300 |", "test accuracy 0.74 ± 0.02 (5 seeds)", "trust_remote_code=True"):
        assert text in card.text, text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_serve_batches_a_burst_and_answers_as_predict(ray_session, tiny_models, tmp_path):
    """A real local Serve instance on 127.0.0.1 (not Serve's local testing mode): 200 requests from 32 threads within a
    time limit, every answer equal to ``predict``'s label, batches larger than one, 400 with one line for bad bodies,
    a health route; shut down afterwards."""
    from ray import serve

    from mtbert_ray.cli.export import main as export_main
    from mtbert_ray.deploy.onnx import OnnxStudent
    from mtbert_ray.deploy.serve import app

    folder = convert_student(make_tiny_student(tmp_path / "old", tiny_models["bert"]), tmp_path / "student")
    with pytest.raises(SystemExit):
        export_main(["onnx", str(folder), "--no-speed"])
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"model_dir": str(folder), "batch_wait_timeout_s": "0.02"}), name="student", route_prefix="/")
        url = f"http://127.0.0.1:{port}/"
        health = json.loads(urllib.request.urlopen(url + "healthz", timeout=30).read())
        assert health == {"status": "ok", "runtime": "onnx", "labels": ["negative", "positive"]}
        texts = [f"film number {i} was {'good' if i % 2 else 'bad'}" for i in range(200)]
        expected = [p.label for p in OnnxStudent(folder).predict(texts)]
        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda t: _post(url, {"text": t}), texts))
        assert time.monotonic() - started < 120
        assert all(status == 200 for status, _ in answers)
        assert [body["label"] for _, body in answers] == expected
        status, many = _post(url, {"texts": texts[:3]})
        assert status == 200 and [m["label"] for m in many] == expected[:3]
        sizes = json.loads(urllib.request.urlopen(url + "stats", timeout=30).read())["batch_sizes"]
        assert max(int(k) for k in sizes) > 1, sizes
        for bad in (b"not json", {"texts": []}, {"text": "x", "texts": ["y"]}, {"text": "x", "text_pair": "y"},
                    b"[" * 100_000, b'{"text": ' + b"[" * 50 + b'"x"' + b"]" * 50 + b"}", b"\xff\xfe{"):
            status, body = _post(url, bad)
            assert status == 400 and len(body["error"].splitlines()) == 1, body
        status, body = _post(url, json.dumps({"texts": ["x" * 5000] * 250}).encode())  # 1.25 MB: over the size bound
        assert status == 413 and "at most 1,048,576" in body["error"], body
        assert _post(url, {"text": texts[0]}) == (200, answers[0][1])  # still up after the bad bodies
    finally:
        serve.shutdown()


def test_the_serve_applications_options_are_checked_and_reach_the_deployment(tmp_path):
    """threads fixes each replica's CPUs (and its runtime's intra-op threads); num_replicas takes N or auto; a value
    that is not a positive integer is refused naming the option."""
    from mtbert_ray.deploy.serve import app

    bound = app({"model_dir": str(tmp_path), "threads": "2", "num_replicas": "auto", "max_ongoing_requests": "64"})
    deployment = bound._bound_deployment
    assert deployment.ray_actor_options["num_cpus"] == 2 and deployment.max_ongoing_requests == 64
    assert bound._bound_deployment.init_args[-1] == 2
    assert app({"model_dir": str(tmp_path)})._bound_deployment.ray_actor_options["num_cpus"] == 1
    for key, value in (("threads", "0"), ("threads", "two"), ("num_replicas", "-1"), ("max_ongoing_requests", "x")):
        with pytest.raises(ValueError, match=f"^{key}: expected a positive integer, got {value!r}$"):
            app({"model_dir": str(tmp_path), key: value})


def test_the_best_students_card_carries_its_rows_seeds(tiny_models, tmp_path):
    """After a sweep, the best trial's card gets its row's mean ± 95 % interval over seeds (``sweep.card_with_seeds``)."""
    import pandas as pd
    from huggingface_hub import ModelCard

    from mtbert_ray.study.analysis import Report
    from mtbert_ray.study.sweep import card_with_seeds

    folder = convert_student(make_tiny_student(tmp_path / "old", tiny_models["bert"]), tmp_path / "run" / "student")
    table = pd.DataFrame([{"row": "MT-BERT", "n": 5, "stopped_early": 0, "test_accuracy_mean": 80.12, "test_accuracy_ci": 1.5,
                           "val_accuracy_mean": 81.0, "val_accuracy_ci": 0.9},
                          {"row": "other", "n": 5, "stopped_early": 0, "test_accuracy_mean": 70.0, "test_accuracy_ci": 2.0,
                           "val_accuracy_mean": 71.0, "val_accuracy_ci": 2.0}])
    best = {"row": "MT-BERT", "test": {"accuracy": 0.8}, "validation": {"accuracy": 0.81}, "student_dir": str(folder)}
    card_with_seeds(Report(tmp_path, table, "", best=best))
    text = ModelCard.load(folder / "README.md").text
    assert "test accuracy 80.12 ± 1.50 % (95 % interval, 5 seeds of row 'MT-BERT')" in text
    assert "validation accuracy 81.00 ± 0.90 %" in text


@pytest.mark.parametrize("raw,status,message", [
    (b"[" * 100_000, 400, "nests deeper than 8 levels"),
    (b'{"texts": [' + b"[" * 20 + b"]" * 20 + b"]}", 400, "nests deeper than 8 levels"),
    (b'{"text": "[[[[[[[[[[[[[[[[[[[[ is text, not nesting"}', None, None),
    (b"x" * ((1 << 20) + 1), 413, "the body is 1,048,577 bytes; at most 1,048,576"),
    (b"\xff\xfe", 400, "the body is not JSON"),
    (b'{"text": 1e999999}', 400, '"text" must be a non-empty string'),
])
def test_a_body_is_bounded_before_it_is_parsed(raw, status, message):
    """``parse_body``: size and depth are checked on the bytes, without recursion; whatever the parser raises is a 400."""
    from mtbert_ray.deploy.serve import BadRequest, nesting_depth, parse_body

    if status is None:
        assert parse_body(raw, pair=False)[0][0].startswith("[[[[")
        return
    with pytest.raises(BadRequest, match=message) as info:
        parse_body(raw, pair=False)
    assert info.value.status == status and "\n" not in str(info.value)
    assert nesting_depth(b'{"a": ["\\"[[["]}', 10) == 2


def test_the_deploy_gate_removes_an_int8_that_flips_a_class(tiny_models, tmp_path, monkeypatch, capsys):
    """An int8 model whose head was broken after quantisation (+50 on one class's bias: every row that class) is not
    kept: the gate compares it with PyTorch on the run's validation split, removes model.int8.onnx, keeps model.onnx,
    says why in one line, in onnx_report.json and in the card; ``predict --runtime onnx-int8`` then says it is missing."""
    import onnx
    import yaml
    from onnx import numpy_helper

    from mtbert_ray.cli.export import main as export_main
    from mtbert_ray.deploy import export as export_module
    from tests import data_fixtures as fx
    from tests.conftest import tiny_experiment

    folder = convert_student(make_tiny_student(tmp_path / "old", tiny_models["bert"]), tmp_path / "student")
    data = fx.write_files(tmp_path / "data", "csv")
    experiment = tiny_experiment(tiny_models, tmp_path)
    experiment["data"].update(path=str(data), text_fields=["text"], limit_train=None, limit_eval=None)
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    real = export_module.export_onnx_files

    def broken_int8(classifier, target, int8):
        written = real(classifier, target, int8)
        texts = __import__("pandas").read_csv(data / "validation.csv")["text"].tolist()
        predicted = classifier.predict_proba(texts).argmax(-1).tolist()
        rare = min(range(2), key=predicted.count)  # the class PyTorch predicts least: make int8 predict it always
        model = onnx.load(str(target / "model.int8.onnx"))
        bias = next(t for t in model.graph.initializer if t.name.endswith("head.dense.bias"))
        values = numpy_helper.to_array(bias).copy()
        values[rare] += 50.0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(target / "model.int8.onnx"))
        return written

    monkeypatch.setattr(export_module, "export_onnx_files", broken_int8)
    with pytest.raises(SystemExit) as done:
        export_main(["onnx", str(folder), "--int8", "--no-speed"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "[mtbert] onnx-int8 export not kept: " in out and "recall" in out
    report = json.loads((folder / "onnx_report.json").read_text())
    assert report["gate"]["onnx-int8"]["kept"] is False and report["gate"]["onnx"]["kept"] is True
    assert report["gate"]["onnx-int8"]["rows"] == 6 and min(report["gate"]["onnx-int8"]["class_deltas"].values()) < -3
    assert not (folder / "model.int8.onnx").exists() and (folder / "model.onnx").is_file()
    card = (folder / "README.md").read_text()
    assert "## Deploy gate" in card and "- onnx-int8: not kept" in card and "- onnx: kept" in card


def test_served_figures_join_the_export_report_and_the_card(tiny_models, tmp_path):
    """``record_served`` (``benchmarks/serve.py --card``): the served rows/s and latencies go into onnx_report.json and
    the model card's "Speed served" table, next to what was there."""
    from mtbert_ray.deploy.export import record_served
    from mtbert_ray.deploy.onnx import REPORT_FILE

    folder = convert_student(make_tiny_student(tmp_path / "old", tiny_models["bert"]), tmp_path / "student")
    (folder / REPORT_FILE).write_text(json.dumps({"files": ["model.onnx"]}))
    card = record_served(folder, {"texts32 (32 row(s)/request, 4 client threads)": {"rows_per_s": 164.2, "p50_ms": 764.3,
                                                                                   "p99_ms": 1018.9}})
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["files"] == ["model.onnx"] and report["served"]["texts32 (32 row(s)/request, 4 client threads)"]["p99_ms"] == 1018.9
    text = card.read_text()
    assert "## Speed served" in text and "| texts32 (32 row(s)/request, 4 client threads) | 164 | 764.30 | 1018.90 |" in text
    assert StudentClassifier.from_pretrained(folder).predict(["fine"])  # the folder still loads
