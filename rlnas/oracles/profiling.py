"""What the latency oracle times, and where an IR's time goes.

The metric (:data:`METRICS`): ``latency`` times single images, one at a time (one stream,
``PERFORMANCE_HINT LATENCY``); ``throughput`` times OpenVINO's throughput mode (``PERFORMANCE_HINT
THROUGHPUT`` on the profile's threads and precision hint, the plugin choosing the streams and
the number of requests kept in flight), as the time per image (1000 / images per second). Both
are timed the same way, in interleaved rounds against the reference, so a ratio is always
candidate / reference time per image: lower is faster. The worker runs the blocks of each metric
(:mod:`rlnas.oracles.worker`).

Per-layer times come from OpenVINO's performance counters, grouped by layer class
(:func:`classify_layer_times`) or by kernel (:func:`kernel_totals`).
"""

from __future__ import annotations

from typing import Any

#: What a latency measurement times (see the module doc).
METRICS = ("latency", "throughput")
#: How reports name each metric's time.
METRIC_LABELS = {"latency": "batch-1 latency", "throughput": "throughput-mode time per image"}

LAYER_CLASSES = ("stem", "conv1x1", "conv3x3", "grouped", "fc", "other")


def time_label(latency_metric: str) -> str:
    """What the milliseconds of a latency metric are (the result table, the report, the logs)."""
    return "latency" if latency_metric == "latency" else f"time per image in {latency_metric} mode"


def ratio_label(latency_metric: str) -> str:
    """What a ratio to a0 of a latency metric compares."""
    return "latency ratio" if latency_metric == "latency" else f"{latency_metric} ratio (time per image)"


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"latency metric {metric!r} not in {METRICS}")
    return metric


def metric_config(config: dict[str, str], metric: str) -> dict[str, str]:
    """The CPU properties that time ``metric``, from a profile's latency properties
    (:meth:`~rlnas.oracles.device.DeviceProfile.compile_config`): as they are for latency; for
    throughput the same threads and precision hint with ``PERFORMANCE_HINT THROUGHPUT`` and no
    stream count, which the plugin then chooses."""
    if check_metric(metric) == "latency":
        return dict(config)
    out = {**config, "PERFORMANCE_HINT": "THROUGHPUT"}
    out.pop("NUM_STREAMS", None)
    return out


def images_per_second(ms_per_image: dict[str, float]) -> dict[str, float]:
    """Images per second from the time per image (ms) of each model."""
    return {name: 1000.0 / ms for name, ms in ms_per_image.items()}


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
