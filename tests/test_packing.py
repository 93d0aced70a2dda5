"""Plans placed on nodes, not compared with totals (``distributed.packing``, ``distributed.needs``): the arithmetic
alone, with fake GPUs and custom resources, on the cases that passed a sum and then waited forever."""
from __future__ import annotations

import pytest

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import validate_config
from mtbert_ray.distributed.needs import (
    Cluster,
    autoscaler_headroom,
    fit_plan,
    nearby_settings,
    node_type_resources,
    trial_needs,
)
from mtbert_ray.distributed.packing import Bundle, Node, NoRoom, TrialShape, concurrent, pack
from tests.conftest import tiny_experiment


def _config(tiny_models, tmp_path, **resources):
    raw = tiny_experiment(tiny_models, tmp_path, resources=resources)
    raw["cofinetune"]["batch_size"] = raw["distill"]["batch_size"] = 12  # divisible by 1, 2, 3, 4 workers
    return validate_config(raw)


def test_totals_that_fit_but_pieces_that_do_not_pack_are_refused(tiny_models, tmp_path):
    """The issue's plan: three nodes of 2 CPUs (6 in all), 3 Train workers × 1.5 CPUs + a 0.5-CPU driver + a 1-CPU read
    task = 6. Placed, each worker leaves 0.5 CPU on its node and the driver takes one of those: no node has a whole CPU
    for the read task. Refused, with the nearby plan that packs (whole CPUs per worker)."""
    cfg = _config(tiny_models, tmp_path, num_workers=3, cpus_per_worker=1.5, execution="trainer")
    needs = trial_needs(cfg, trial_cpus=0.5)
    assert needs.peak["CPU"] == 6.0
    cluster = Cluster.of_nodes({"CPU": 2}, {"CPU": 2}, {"CPU": 2}, source="three 2-CPU nodes")
    with pytest.raises(ConfigError) as refused:
        fit_plan({"the trial": needs}, cluster, 1, lambda _: nearby_settings(cfg, 0.5, None, cluster))
    message = str(refused.value)
    assert message.startswith("resources: the trial can never start on three 2-CPU nodes: Ray Data read tasks (1 CPU) finds "
                              "no node with room in its co-finetuning stage"), message
    assert "the closest is node" in message and "(0.5 CPU free)" in message
    assert message.endswith("with resources.cpus_per_worker: 1 (from 1.5) it would pack (a batch size must still divide by "
                            "the workers)"), message
    assert "\n" not in message
    whole = trial_needs(cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"cpus_per_worker": 1.0})}), 0.5)
    assert fit_plan(whole, cluster, 4) == 1


def test_a_two_gpu_worker_needs_a_node_with_two_gpus_whatever_the_total():
    nodes = [Node("a", "gpu1", {"CPU": 8, "GPU": 1}), Node("b", "gpu1", {"CPU": 8, "GPU": 1})]
    with pytest.raises(NoRoom) as missing:
        pack([Bundle.of("Ray Train worker", {"CPU": 1, "GPU": 2})], nodes)
    assert missing.value.bundle.resources == {"CPU": 1.0, "GPU": 2.0} and missing.value.closest.name == "a"
    assert "finds no node with room; the closest is a (8 CPU + 1 GPU free)" in str(missing.value)
    assert pack([Bundle.of("w", {"CPU": 1, "GPU": 2})], [*nodes, Node("c", "gpu4", {"CPU": 48, "GPU": 4})]).where[0][1] == "c"


def test_a_custom_resource_only_some_nodes_offer_places_the_driver_there():
    """search.driver_resource: trial drivers only on nodes offering it (on-demand ones); the workers go anywhere."""
    nodes = [Node("spot", "spot", {"CPU": 8, "GPU": 1}), Node("head", "head", {"CPU": 2, "mtbert_driver": 16})]
    trial = TrialShape("t", (Bundle.of("trial driver", {"CPU": 0.5, "mtbert_driver": 0.001}),),
                       {"distillation": (Bundle.of("Ray Train worker", {"CPU": 1, "GPU": 1}), Bundle.of("read", {"CPU": 1}))})
    placed = pack(trial.at("distillation"), nodes)
    assert dict((b.what, n) for b, n in placed.where) == {"trial driver": "head", "Ray Train worker": "spot", "read": "spot"}
    assert concurrent([trial], nodes, 8) == 1  # one GPU: one trial at its distillation stage
    assert concurrent([trial], [*nodes, Node("spot2", "spot", {"CPU": 8, "GPU": 1})], 8) == 2
    with pytest.raises(NoRoom, match=r"trial driver \(0.5 CPU \+ mtbert_driver\)"):
        pack(trial.at(None), [Node("spot", "spot", {"CPU": 8})])


def test_concurrent_trials_are_capped_by_what_packs_together_not_by_sums():
    """Two trials whose totals fit 2 × 3-CPU nodes (2 × 3 CPU) but whose 2-CPU workers and 1-CPU read tasks do not
    all pack at once: one trial at a time."""
    trial = TrialShape("t", (Bundle.of("driver", {"CPU": 0.5}),),
                       {"co-finetuning": (Bundle.of("worker", {"CPU": 2}), Bundle.of("read", {"CPU": 0.5}))})
    nodes = [Node("a", "n", {"CPU": 3}), Node("b", "n", {"CPU": 3})]
    assert concurrent([trial], nodes, 4) == 2
    bigger = TrialShape("u", (Bundle.of("driver", {"CPU": 0.5}),),
                        {"co-finetuning": (Bundle.of("worker", {"CPU": 2}), Bundle.of("read", {"CPU": 1}))})
    assert concurrent([bigger], nodes, 4) == 1  # 2 × (0.5 + 2 + 1) = 7 > 6, and even 2 × 3 would not split evenly


def test_every_kind_of_trial_is_placed_and_the_one_that_never_fits_is_named(tiny_models, tmp_path):
    base = _config(tiny_models, tmp_path, num_workers=2, cpus_per_worker=1, execution="trainer")
    wide = _config(tiny_models, tmp_path, num_workers=4, cpus_per_worker=2, execution="trainer")
    cluster = Cluster.of_nodes({"CPU": 3}, {"CPU": 3}, source="two 3-CPU nodes")
    kinds = {"the trial": trial_needs(base, 0.5), "the trial of variant 'wide'": trial_needs(wide, 0.5)}
    with pytest.raises(ConfigError, match=r"^resources: the trial of variant 'wide' can never start on two 3-CPU nodes: "
                                          r"Ray Train worker \(2 CPU\) finds no node with room"):
        fit_plan(kinds, cluster, 2)
    assert fit_plan({"the trial": kinds["the trial"]}, cluster, 4) == 1


def test_the_autoscaler_counts_the_workers_already_up_once(tmp_path):
    """max_workers 3 in all, 2 per GPU type: with one GPU worker up, the autoscaler can add one more GPU node and one
    CPU node — not the type's full max_workers again beside the live one."""
    config = {"max_workers": 3, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 2}, "max_workers": 0},
                                       "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2},
                                       "cpu": {"resources": {"CPU": 4}, "max_workers": 5}}}
    launchable, budget = autoscaler_headroom(config, running={"head": 1, "gpu": 1})
    assert dict((k, n) for k, _, n in launchable) == {"gpu": 1, "cpu": 5} and budget == 2
    live = (Node("10.0.0.1 (head)", "head", {"CPU": 2}), Node("10.0.0.2 (gpu)", "gpu", {"CPU": 8, "GPU": 1}))
    reachable = Cluster(live, launchable, budget).reachable()
    assert [n.kind for n in reachable] == ["head", "gpu", "gpu", "cpu"]
    assert sum(n.free.get("GPU", 0) for n in reachable) == 2  # the live GPU node and one more, not 1 + 2


@pytest.mark.parametrize("spec,expected", [
    ({"resources": {}, "node_config": {"InstanceType": "g5.2xlarge"}}, {"CPU": 8, "GPU": 1}),
    ({"resources": {}, "node_config": {"InstanceType": "g5.12xlarge"}}, {"CPU": 48, "GPU": 4}),
    ({"resources": {"mtbert_driver": 16}, "node_config": {"InstanceType": "m5.2xlarge"}}, {"CPU": 8, "mtbert_driver": 16}),
    ({"node_config": {"machineType": "g2-standard-8", "guestAccelerators": [{"acceleratorCount": 1}]}}, {"CPU": 8, "GPU": 1}),
    ({"resources": {"CPU": 6, "mtbert_driver": 16}, "node_config": {"InstanceType": "m5.2xlarge"}}, {"CPU": 6, "mtbert_driver": 16}),
])
def test_a_node_type_with_empty_resources_is_read_from_its_instance_type(spec, expected):
    assert node_type_resources("worker", spec) == expected


def test_a_node_type_whose_resources_cannot_be_known_is_refused_with_what_to_state():
    with pytest.raises(ConfigError, match=r"node type 'odd' has no resources and its instance type 'x9.huge' is not one "
                                          r"mtbert-ray knows; state them in the cluster file \(resources: \{CPU: n, GPU: m\}\)"):
        node_type_resources("odd", {"resources": {}, "node_config": {"InstanceType": "x9.huge"}})


def test_the_shipped_aws_file_counts_its_gpus():
    """cluster/aws-gpu.yaml's worker types say resources: {} (Ray detects them): 8 × 1 + 2 × 4 GPUs, not 0."""
    from mtbert_ray.config import read_yaml
    from tests.conftest import REPO

    launchable, budget = autoscaler_headroom(read_yaml(REPO / "cluster" / "aws-gpu.yaml"))
    nodes = Cluster((), launchable, budget).reachable()
    assert sum(n.free.get("GPU", 0) for n in nodes) == 1 * 6 + 4 * 2  # cluster max_workers 8: both 4-GPU nodes first
    assert {n.kind for n in nodes} == {"worker.gpu1", "worker.gpu4"}


def test_busy_nodes_are_placed_on_what_is_free(tiny_models, tmp_path):
    """Another job holds 3 of a 4-CPU node: an in-process 2-CPU trial cannot start now, and the refusal says what holds
    the rest; placed on the whole node (--wait-for-resources), it fits and waits."""
    needs = trial_needs(_config(tiny_models, tmp_path, cpus_per_worker=2), 0.5)
    busy = Cluster((Node("10.0.0.1 (node)", "node", {"CPU": 1.0}),), source="this cluster's 1 node(s)",
                   held="3 CPU held by other work now (another job or sweep: ray status shows what)")
    with pytest.raises(ConfigError, match=r"trial \(2 CPU\) finds no node with room .* the closest is 10.0.0.1 \(node\) \(1 CPU "
                                          r"free\); 3 CPU held by other work now"):
        fit_plan(needs, busy, 1)
    whole = Cluster((Node("10.0.0.1 (node)", "node", {"CPU": 4.0}),), source="this cluster's 1 node(s)")
    assert fit_plan(needs, whole, 2) == 1


def test_each_trial_reserves_its_own_size_not_the_base_experiments(tiny_models, tmp_path):
    """A variant of 2 CPUs per worker reserves 2 CPUs in Tune, the base 1: ``tune.with_resources`` is given a function of
    each trial's parameters (``study.sweep.TrialReservation``), and the dry run sizes both kinds."""
    import yaml

    from mtbert_ray.config.space import load_space
    from mtbert_ray.study.dryrun import trial_kinds
    from mtbert_ray.study.record import SweepRecord
    from mtbert_ray.study.sweep import TrialReservation

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "kinds", "experiment": tiny_experiment(tiny_models, tmp_path),
                                    "variants": {"small": {}, "big": {"resources.cpus_per_worker": 2}},
                                    "space": {"variant": {"grid": "all"}, "loss.temperature": {"grid": [1, 2]}}}))
    space = load_space(path)
    kinds = trial_kinds(space)
    assert list(kinds) == ["each trial", "the trial of variant 'big'"]  # the temperature changes no ask
    record = SweepRecord(name="kinds", source=str(path), spec=space.spec.model_dump(mode="json"), base=space.base,
                         row_key="variant", select={"metric": "accuracy", "mode": "max"}, metrics=["accuracy"],
                         comparisons=[], storage=str(tmp_path), experiment_dir=str(tmp_path / "kinds"), created=0.0)
    reserve = TrialReservation(record, None)
    assert reserve({"variant": "small", "loss.temperature": 1, "seed": 0}).bundles == [{"CPU": 1.0}]
    assert reserve({"variant": "big", "loss.temperature": 2, "seed": 0}).bundles == [{"CPU": 2.0}]


def test_the_budget_picker_chooses_on_validation_never_on_test():
    """Three rows inside the budget: the pick is the best *validation* row, although another has the best test; a
    row outside the budget or not kept by the gate is never picked; a budget nobody meets names the fastest row."""
    import pandas as pd

    from mtbert_ray.common.errors import ResultsError
    from mtbert_ray.study.frontier import pareto, pick

    table = pd.DataFrame([
        {"trial_id": "a", "runtime": "onnx", "kept": True, "p50_ms": 2.0, "val_accuracy": 0.80, "test_accuracy": 0.90, "val_retention": 0.95},
        {"trial_id": "b", "runtime": "onnx", "kept": True, "p50_ms": 3.0, "val_accuracy": 0.84, "test_accuracy": 0.79, "val_retention": 0.99},
        {"trial_id": "c", "runtime": "onnx-int8", "kept": False, "p50_ms": 1.0, "val_accuracy": 0.90, "test_accuracy": 0.91, "val_retention": 1.0},
        {"trial_id": "d", "runtime": "torch", "kept": True, "p50_ms": 9.0, "val_accuracy": 0.95, "test_accuracy": 0.95, "val_retention": 1.0},
    ])
    assert pick(table, latency_budget_ms=5)["trial_id"] == "b"  # not a (best test), not c (gate), not d (too slow)
    assert pick(table, min_retention=0.96)["trial_id"] == "d"
    with pytest.raises(ResultsError, match="no student is inside; the fastest is trial a on onnx at 2.00 ms"):
        pick(table, latency_budget_ms=1.5)
    assert list(pareto(table)) == [True, True, False, True]  # c is not kept; a, b, d trade accuracy for speed
