"""Loopback Ray clusters for tests: free ports outside Ray's worker range, and forgetting a stopped cluster's address."""
from __future__ import annotations

import tempfile
from pathlib import Path


def free_ports(n: int, low: int = 20000, high: int = 29999) -> list[int]:
    """``n`` distinct ports free now, outside Ray's default worker port range (10002–19999)."""
    import socket

    ports: list[int] = []
    for port in range(low, high):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError("no free ports")


def forget_cluster_address(address: str) -> None:
    """Remove the address file ``ray start`` wrote (as ``ray stop`` does) when it names this test's cluster."""
    marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if marker.read_text().strip() == address:
            marker.unlink()
    except OSError:
        pass


MULTI_NODE = """
import sys, time
from ray.cluster_utils import Cluster
cpus, nodes, dashboard, agent = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# The head's job agent on a free port: Ray's default (52365) may be held by another Ray instance on this machine,
# and then no agent takes jobs ("No available agent to submit job"); the other nodes pick theirs at random.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": True,
                                                        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
                                                        "dashboard_agent_listen_port": agent,
                                                        "object_store_memory": 200 * 2**20})
for _ in range(nodes - 1):
    cluster.add_node(num_cpus=cpus, object_store_memory=200 * 2**20)
cluster.wait_for_nodes()
print("ready", cluster.address, flush=True)
try:
    sys.stdin.read()  # until the test closes our stdin
finally:
    cluster.shutdown()
"""


def multi_node_cluster(nodes: int, cpus: float, env: dict):
    """A loopback cluster of ``nodes`` raylets of ``cpus`` CPUs each (Ray's own ``ray.cluster_utils.Cluster``, in a
    process of its own, with the head's dashboard / job server on 127.0.0.1). A context manager yielding (the dashboard
    URL, the GCS address); the cluster is shut down by its own process (``Cluster.shutdown``), then killed by its process group."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    @contextlib.contextmanager
    def running():
        dashboard, agent = free_ports(2)
        proc = subprocess.Popen([sys.executable, "-c", MULTI_NODE, str(cpus), str(nodes), str(dashboard), str(agent)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True, cwd=tempfile.gettempdir())
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready"), f"the cluster did not start: {line!r}"
            yield f"http://127.0.0.1:{dashboard}", line.split()[1]
        finally:
            try:
                proc.stdin.close()
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of this cluster is left, and nothing else
            except ProcessLookupError:
                pass

    return running()
