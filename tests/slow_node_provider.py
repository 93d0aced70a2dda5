"""Ray's fake multi-node provider with nodes that take ``boot_delay_s`` (from the node type's ``node_config``)
to come up, like a cloud GPU node that boots and pulls an image: used by the autoscaling test through
``provider: {type: external, module: tests.slow_node_provider.SlowFakeProvider}``."""
from __future__ import annotations

import time

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class SlowFakeProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        time.sleep(float(node_config.get("boot_delay_s", 0)))  # the autoscaler's launcher waits, as for a cloud API
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
