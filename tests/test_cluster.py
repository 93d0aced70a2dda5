"""cluster/: YAMLs valid under Ray's own schema; the GPU path configured; a sweep on an autoscaling cluster."""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mtbert_ray.config import ResourcesConfig, validate_config
from mtbert_ray.distributed.runtime import scaling_config
from tests.cluster_helpers import forget_cluster_address, free_ports
from tests.conftest import REPO, tiny_experiment

CLUSTER_FILES = sorted((REPO / "cluster").glob("*.yaml"))


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler._private.util import validate_config as ray_validate

    ray_validate(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.stem)
def test_cluster_yaml_passes_rays_schema(path):
    cfg = yaml.safe_load(path.read_text())
    _validate(cfg)
    text = path.read_text()
    assert "0.0.0.0" not in text, "the dashboard must not listen on every interface"
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert not re.search(r"(aws_secret|aws_access_key|private_key_id|BEGIN [A-Z ]*PRIVATE KEY)", text, re.I)
    setup = " ".join(cfg.get("setup_commands", []))
    image = (cfg.get("docker") or {}).get("image", "")
    assert re.search(r":0\.1\.0-gpu$", image) or "-c ~/mtbert-ray/constraints.txt ~/mtbert-ray" in setup, \
        "the project's image, or the repository installed with its pins"
    assert "python3 -m mtbert_ray.tools.node_check" in cfg["worker_start_ray_commands"], "GPU nodes checked before Ray starts"
    assert " -e " not in setup, "never an editable path"
    assert ">> ~/.bashrc" not in text, "set-up must not append to a file on every `ray up`"
    assert "HF_TOKEN" not in json.dumps(cfg.get("docker", {}).get("run_options", [])).replace("--env-file", ""), \
        "no token value in the file: containers read it from the node's environment file"
    nodes = cfg.get("available_node_types") or {}
    for name, node in nodes.items():
        if name != cfg.get("head_node_type"):
            assert node.get("min_workers", 0) == 0 and node["max_workers"] >= 1
            assert "mtbert_driver" not in (node.get("resources") or {}), "trial drivers only on the on-demand head"
    if nodes:  # cloud files: the head hosts the trial drivers and is not spot / preemptible
        head = nodes[cfg["head_node_type"]]
        assert head["resources"].get("mtbert_driver", 0) >= 1 and "spot" not in json.dumps(head).lower()
        assert "preemptible" not in json.dumps(head)
    else:
        assert "mtbert_driver" in " ".join(cfg["head_start_ray_commands"])
    if cfg["provider"]["type"] == "gcp":
        for name, node in nodes.items():
            if node["node_config"].get("guestAccelerators"):
                items = node["node_config"]["metadata"]["items"]
                assert {"key": "install-nvidia-driver", "value": "True"} in items, f"{name}: no NVIDIA driver"


BROKEN = {
    "wrong type": lambda c: c.__setitem__("max_workers", "eight"),
    "unknown key": lambda c: c.__setitem__("max_worker", 3),
    "undefined head type": lambda c: c.__setitem__("head_node_type", "no_such_type"),
    "bad idle timeout": lambda c: c.__setitem__("idle_timeout_minutes", "soon"),
}


@pytest.mark.parametrize("path", [p for p in CLUSTER_FILES if "gpu" in p.stem], ids=lambda p: p.stem)
@pytest.mark.parametrize("breakage", list(BROKEN))
def test_broken_copy_fails_validation(path, breakage):
    cfg = yaml.safe_load(path.read_text())
    BROKEN[breakage](cfg)
    with pytest.raises(Exception):
        _validate(cfg)


def test_gpu_settings_reach_the_scaling_config_and_trial_resources(tiny_models, tmp_path):
    from mtbert_ray.config import micro_batch
    from mtbert_ray.config.space import load_space
    from mtbert_ray.study.dryrun import trial_kinds

    sc = scaling_config(ResourcesConfig(num_workers=2, use_gpu=True, cpus_per_worker=4, gpus_per_worker=1))
    assert sc.use_gpu and sc.num_workers == 2
    assert sc.resources_per_worker == {"CPU": 4, "GPU": 1}
    # a fractional GPU suits one worker (a trial sharing a GPU), never two NCCL ranks on one GPU ("Duplicate GPU detected")
    assert scaling_config(ResourcesConfig(num_workers=1, use_gpu=True, gpus_per_worker=0.5)).resources_per_worker["GPU"] == 0.5
    with pytest.raises(ValueError, match="gpus_per_worker=0.5 with num_workers=2: data-parallel workers need a whole GPU"):
        ResourcesConfig(num_workers=2, use_gpu=True, gpus_per_worker=0.5)
    assert scaling_config(ResourcesConfig()).resources_per_worker == {"CPU": 1.0} and not scaling_config(ResourcesConfig()).use_gpu

    space = load_space(REPO / "tune_spaces" / "paper_glue.yaml")
    base = validate_config(space.base)
    assert base.resources.use_gpu and base.resources.gpus_per_worker == 1
    assert not base.resources.in_process, "GPU stages run on Ray Train workers"
    (needs, _), = trial_kinds(space).values()  # one kind: the study varies nothing that changes the ask
    assert needs.tune_resources() == {"cpu": 1}  # the trial driver; its stages' workers reserve their own
    assert needs.peak == {"CPU": 1 + 4 + 1, "GPU": 1}  # driver + a 4-CPU GPU worker (or cache actor) + a read task
    sc = scaling_config(base.resources)
    assert sc.use_gpu and sc.resources_per_worker == {"CPU": 4, "GPU": 1}
    # a global batch of 64 over 4 GPU workers is 16 per worker
    wide = base.model_copy(update={"resources": base.resources.model_copy(update={"num_workers": 4})})
    assert micro_batch(wide, "distill") == 16


def test_the_pass_through_never_carries_a_secret(monkeypatch):
    from mtbert_ray.distributed.runtime import ENV_PASSTHROUGH, runtime_env_vars

    secret = re.compile(r"TOKEN|KEY|SECRET|PASSWORD")
    assert not [name for name in ENV_PASSTHROUGH if secret.search(name)]
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_ship")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    assert not [name for name in runtime_env_vars() if secret.search(name)]


def test_the_image_is_rays_gpu_image_of_the_pinned_ray_with_the_project_wheel():
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu$", dockerfile, re.M)
    assert "COPY dist/mtbert_ray-*.whl" in dockerfile and "constraints.txt" in dockerfile
    assert not re.search(r"HF_TOKEN|ARG .*TOKEN|ENV .*TOKEN", dockerfile), "no secret baked into the image"
    import ray

    assert ray.__version__ == "2.60.0"


def test_a_job_driver_leaves_out_of_its_runtime_env_what_the_job_sets(monkeypatch):
    """Ray refuses a driver runtime_env repeating a key of the submitted job's runtime_env."""
    from mtbert_ray.distributed.runtime import runtime_env_vars

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/tmp/driver-hf")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runtime_env_vars()["HF_HOME"] == "/tmp/driver-hf"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"HF_HOME": "/job-hf"}}}))
    env = runtime_env_vars()
    assert "HF_HOME" not in env and env["HF_HUB_OFFLINE"] == "1"


def test_upload_copies_a_study_to_an_object_store_uri(tmp_path):
    from mtbert_ray.common.errors import ConfigError
    from mtbert_ray.study.upload import check_upload_uri, upload_sweep

    study = tmp_path / "results" / "sweeps" / "s1"
    (study / "analysis").mkdir(parents=True)
    (study / "analysis" / "table.md").write_text("| variant | accuracy |")
    (study / "runs" / "t1" / "student").mkdir(parents=True)
    (study / "runs" / "t1" / "student" / "model.safetensors").write_bytes(b"\0" * 1000)
    target = upload_sweep(study, check_upload_uri(f"file://{tmp_path}/bucket/studies/"))
    assert target == f"file://{tmp_path}/bucket/studies/s1"
    copied = tmp_path / "bucket" / "studies" / "s1"
    assert (copied / "analysis" / "table.md").read_text() == "| variant | accuracy |"
    assert (copied / "runs" / "t1" / "student" / "model.safetensors").stat().st_size == 1000
    assert check_upload_uri("s3://my-bucket/prefix") == "s3://my-bucket/prefix"
    with pytest.raises(ConfigError, match="names no bucket"):
        check_upload_uri("gs:///prefix")


# ---- a sweep on an autoscaling cluster (Ray's fake multi-node provider) ----------------------------

def _cluster_nodes(address: str, env: dict) -> tuple[dict[str, int], dict[str, int]]:
    """Nodes per type from one ``ray status``: those up ("Active") and those being launched ("Pending",
    lines such as `` cpu1, 1 launching`` or `` <ip>: cpu1, setting-up``)."""
    out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"],
                         capture_output=True, text=True, env=env, timeout=60).stdout
    if "Active:" not in out:
        return {}, {}
    active_text, _, rest = out.split("Active:")[1].partition("Pending:")
    active = {name: int(n) for n, name in re.findall(r"^\s*(\d+)\s+(\S+)\s*$", active_text, re.M)}
    pending: dict[str, int] = {}
    for line in rest.split("Recent failures:")[0].splitlines():
        launching = re.match(r"^\s*(\S+),\s*(\d+)\s+launching", line)
        if launching:
            pending[launching[1]] = pending.get(launching[1], 0) + int(launching[2])
        elif (starting := re.match(r"^\s*\S+:\s*(\S+),", line)):
            pending[starting[1]] = pending.get(starting[1], 0) + 1
    return active, pending


def _node_counts(address: str, env: dict) -> dict[str, int]:
    return _cluster_nodes(address, env)[0]


def _autoscaler_events(session_dir: Path) -> str:
    """The autoscaler's own account (launches, additions, idle terminations) from this cluster's monitor.log."""
    try:
        lines = (session_dir / "logs" / "monitor.log").read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no monitor.log: {exc})"
    keep = ("event_summary", "Queue", "Terminating", "Got ", "ERROR", "WARN")
    return "\n".join(line for line in lines if any(k in line for k in keep))[-4000:]


def _job_status(dashboard: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(dashboard).get_job_status(job_id).value)


BOOT_DELAY_S = 75  # longer than Ray Train's default 60 s worker-group start-up timeout
IDLE_TIMEOUT_S = 30  # the cluster's idle_timeout_minutes: 0.5
# Scale-down bound. A node launched for a demand that is gone by the time it boots (the second trial waited
# for a node, then took the first trial's freed one) comes up to BOOT_DELAY_S after the job ends, then idles
# IDLE_TIMEOUT_S before the autoscaler removes it: up to 75 + 30 = 105 s. Measured here: 57 s, with such a
# late node up 16 s after the job ended (2026-11). The rest is room for a loaded CI machine, where 180 s once ran out.
SCALE_DOWN_WAIT_S = BOOT_DELAY_S + IDLE_TIMEOUT_S + 195


@pytest.mark.slow
def test_sweep_scales_an_autoscaling_cluster_up_and_back_down(tiny_models, tmp_path, shared_storage, monkeypatch):
    """A 2-trial sweep submitted as a job to a cluster of 0 worker nodes whose nodes take 75 s to come up
    (longer than Ray Train's default start-up timeout): the trial drivers wait on the head (the only node
    offering `mtbert_driver`), the stages' workers wait for the slow nodes, the study finishes and the idle
    nodes go away."""
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    # every port of this head chosen free, so another Ray on the machine (e.g. the tests' embedded one) does not collide
    gcs_port, dash_port, client_port, agent_port, metrics_port = free_ports(5)
    provider = {
        "cluster_name": "mtbert-fake", "max_workers": 3, "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "provider": {"type": "external", "module": "tests.slow_node_provider.SlowFakeProvider",
                     "gcs_address": f"{ip}:{gcs_port}", "launch_multiple": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "use_node_id_as_ip": True},  # fake nodes share one IP
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            # the head: on-demand, hosts the trial drivers (as in cluster/*.yaml), no room for a stage's worker
            "ray.head.default": {"resources": {"CPU": 1, "mtbert_driver": 4}, "node_config": {}, "max_workers": 0},
            "cpu1": {"resources": {"CPU": 1, "object_store_memory": 200 * 2**20},
                     "node_config": {"boot_delay_s": BOOT_DELAY_S}, "min_workers": 0, "max_workers": 3},
        },
        "head_node_type": "ray.head.default",
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                           "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }
    config_file = tmp_path / "fake-cluster.yaml"
    config_file.write_text(yaml.safe_dump(provider))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))  # the autoscaler imports the provider
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # for this test's job client
    address, dashboard = f"{ip}:{gcs_port}", f"http://127.0.0.1:{dash_port}"
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={gcs_port}", "--num-cpus=1",
         "--resources", json.dumps({"mtbert_driver": 4}),
         f"--autoscaling-config={config_file}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
         f"--metrics-export-port={metrics_port}", "--object-store-memory=300000000", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    group = head.pid  # every process of this cluster (head, autoscaler, fake nodes) is in this group
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        session_dir = (Path(tempfile.gettempdir()) / "ray" / "session_latest").resolve()  # the head just made it
        assert _node_counts(address, env).get("cpu1", 0) == 0

        base = tiny_experiment(tiny_models, tmp_path, loss={"hidden": False}, cache={"enabled": False},
                               distill={"epochs": 1}, resources={"num_workers": 1, "cpus_per_worker": 1, "execution": "trainer"})
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({
            "name": "fake-cluster", "experiment": base,
            "space": {"loss.temperature": {"grid": [1.0, 2.0]}},
            # the autoscaler's node types size the study: one trial's peak (0.5 driver + 1 worker + 1 read) is 2.5 of
            # the 1 + 3 × 1 CPUs the cluster can reach, so the two trials run one after the other
            "search": {"searcher": "grid", "max_concurrent_trials": 2, "trial_cpus": 0.5, "autoscaling_config": str(config_file)},
        }))
        job_env = {k: os.environ[k] for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "MTBERT_RAY_CACHE") if k in os.environ}
        # The package reaches the job through PYTHONPATH, not --working-dir: fake nodes share this
        # machine's session folder, and removing an idle fake node deletes the unpacked working_dir
        # under the feet of the processes still running in it (a real node has its own disk).
        # The entry point is this interpreter: PATH need not hold the virtualenv (it does not in CI).
        job_env.update(RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO))
        submit = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", f"--address={dashboard}", "--no-wait",
                  "--runtime-env-json", json.dumps({"env_vars": job_env}), "--",
                  sys.executable, "-m", "mtbert_ray.sweep", "--space", str(space), "--storage", str(shared_storage),
                  "--upload", f"file://{tmp_path}/bucket/studies"]
        deadline = time.time() + 120
        while True:  # the head's job agent may still be starting ("No available agent to submit job")
            submitted = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
            if submitted.returncode == 0 or time.time() > deadline:
                break
            time.sleep(3)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
        peak, status = 0, None
        deadline = time.time() + 720
        while time.time() < deadline:
            peak = max(peak, _node_counts(address, env).get("cpu1", 0))
            status = _job_status(dashboard, job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(3)
        log = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "logs", f"--address={dashboard}", job_id],
                             env=env, capture_output=True, text=True, timeout=60).stdout
        assert status == "SUCCEEDED", f"job {status}: {log[-4000:]}"
        assert "sweep finished: 2 trials (0 errored)" in log
        assert ("search.max_concurrent_trials 2 → 1: at most 1 trial(s) pack together on this cluster's 1 node(s) + what the "
                "autoscaler can still launch") in log
        uploaded = tmp_path / "bucket" / "studies" / "fake-cluster"
        assert (uploaded / "analysis" / "table.md").is_file() and (uploaded / "mtbert_sweep.json").is_file()
        assert peak >= 1, f"the cluster never scaled up (peak {peak} one-CPU workers)"
        # idle workers go away again, including one still booting for a demand that has gone
        def workers_left() -> int:
            active, pending = _cluster_nodes(address, env)
            return active.get("cpu1", 0) + pending.get("cpu1", 0)

        deadline = time.time() + SCALE_DOWN_WAIT_S
        while workers_left() and time.time() < deadline:
            time.sleep(3)
        assert workers_left() == 0, \
            f"idle nodes were not removed within {SCALE_DOWN_WAIT_S} s; the autoscaler said:\n{_autoscaler_events(session_dir)}"
    finally:
        try:
            os.killpg(group, signal.SIGKILL)  # only the processes this test started
        except ProcessLookupError:
            pass
        forget_cluster_address(address)


def test_the_gpu_smoke_script_parses_and_its_configs_validate():
    script = REPO / "scripts" / "gpu_smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable}, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok gpu_smoke bf16", out.stdout + out.stderr


def test_the_node_check_fails_a_gpu_node_torch_cannot_use(tmp_path, monkeypatch, capsys):
    """``python -m mtbert_ray.tools.node_check`` (before ``ray start`` on every worker node): a CPU node (no nvidia-smi) is
    fine; a node whose driver lists GPUs that torch cannot use fails with one line."""
    import stat

    import torch

    from mtbert_ray.tools import node_check

    monkeypatch.setenv("PATH", str(tmp_path))
    assert node_check.node_problem() is None  # no nvidia-smi: a CPU node
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A10G (UUID: GPU-1)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "the driver shows 1 GPU(s) but torch" in node_check.node_problem()
    with pytest.raises(SystemExit) as exited:
        node_check.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("mtbert-ray node check FAILED: the driver shows 1 GPU(s)")


def test_the_gpu_smoke_verdict_fails_on_what_matters(tmp_path):
    """``python -m mtbert_ray.tools.gpu_smoke RUN``: a good run passes; no resume, a NaN loss, no GPU memory and a student at
    chance each fail, by name."""
    from mtbert_ray.tools.gpu_smoke import smoke_failures

    def write(distill_rows, accuracy=0.8, co_rows=None):
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        (run / "distill").mkdir(parents=True)
        co = run / "stages" / "cofinetune" / "k" / "artefact"
        co.mkdir(parents=True)
        (co.parent / "history.jsonl").write_text("\n".join(json.dumps(r) for r in co_rows or [
            {"epoch": 1, "start_epoch": 0, "train_loss": 0.6, "gpu_memory_peak_gb": 9.5, "train_examples_per_s": 300.0}]))
        (run / "distill" / "history.jsonl").write_text("\n".join(json.dumps(r) for r in distill_rows))
        (run / "result.json").write_text(json.dumps({
            "data": {"label_names": ["0", "1"]},
            "stages": {"cofinetune": {"checkpoint": str(co)},
                       "distill": {"metrics": {"accuracy": accuracy}, "test": {"accuracy": accuracy}}}}))
        return run

    good = [{"epoch": 1, "start_epoch": 0, "train_loss": 0.5, "gpu_memory_peak_gb": 3.0},
            {"epoch": 2, "start_epoch": 1, "train_loss": 0.4, "gpu_memory_peak_gb": 3.1}]
    failures, table = smoke_failures(write(good))
    assert failures == [] and table[0].startswith("stage")
    assert smoke_failures(write(good[:1]))[0] == ["distill: no epoch resumed from the epoch-1 checkpoint after the injected fault"]
    nan = [good[0], {**good[1], "train_loss": float("nan")}]
    assert smoke_failures(write(nan))[0] == ["distill epoch 2: train_loss not finite"]
    cpu = [good[0], {**good[1], "gpu_memory_peak_gb": None}]
    assert smoke_failures(write(cpu))[0] == ["distill epoch 2: no GPU memory used (a worker on the CPU?)"]
    assert smoke_failures(write(good, accuracy=0.51))[0] == ["distill: test accuracy 0.5100 is at chance (majority class 0.5000)"]
