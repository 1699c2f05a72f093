"""Where an IR's time goes: per-layer times from OpenVINO's performance counters, grouped by
layer class (:func:`classify_layer_times`) or by kernel (:func:`kernel_totals`).
"""

from __future__ import annotations

from typing import Any

LAYER_CLASSES = ("stem", "conv1x1", "conv3x3", "grouped", "fc", "other")


def classify_layer_times(nodes: dict[str, dict[str, Any]], layers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per-layer-class milliseconds from the worker's performance counters (``nodes``: executed
    nodes; ``layers``: the IR's conv/FC layers): an executed node is the class of the first
    conv/FC layer fused into it (by weight shape)."""
    convs = [name for name, layer in layers.items() if layer["type"] != "MatMul"]
    stem = convs[0] if convs else None
    out = dict.fromkeys(LAYER_CLASSES, 0.0)
    for name, node in nodes.items():
        kind = "other"
        for original in [name, *node.get("fused", [])]:
            owner = next((n for n in layers if original == n or original.startswith(n + "/")), None)
            if owner is None:
                continue
            layer, original = layers[owner], owner
            weights = layer["weights"]
            if original == stem:
                kind = "stem"
            elif layer["type"] == "MatMul":
                kind = "fc"
            elif layer["type"] == "GroupConvolution":
                kind = "grouped"
            else:
                kind = "conv1x1" if weights[-1] == weights[-2] == 1 else "conv3x3"
            break
        out[kind] += node["us"] / 1000.0
    return out


def kernel_totals(nodes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Milliseconds by ``<node type>:<kernel>`` from the worker's performance counters, largest first."""
    times: dict[str, float] = {}
    for node in nodes.values():
        kernel = f"{node['node_type']}:{node['exec_type']}"
        times[kernel] = times.get(kernel, 0.0) + node["us"] / 1000.0
    return dict(sorted(times.items(), key=lambda item: -item[1]))
