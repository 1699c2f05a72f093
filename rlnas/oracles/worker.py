"""The timing worker: a long-lived subprocess per device profile (its client: :mod:`rlnas.oracles.worker_client`).

``ONEDNN_MAX_CPU_ISA`` is read once when OpenVINO loads, so each profile gets its own process,
started with the cap in its environment. Protocol: one JSON object per line; requests on stdin,
replies on a private copy of the original stdout (fd 1 itself is pointed at stderr so that
anything OpenVINO prints cannot corrupt the protocol). The worker never imports torch.

Requests: ``{"op": "ping"}``, ``{"op": "measure", "cand": {"path", "config", "shape"}, "ref": ...|null,
"timing", "lock_path", "mode"}`` (see :meth:`_Worker.measure`), ``{"op": "confirm", "models": {name:
{"path", "config", "shape"}}, "timing", "lock_path", "mode"}`` (N models in interleaved rounds, see
:meth:`_Worker.confirm`), ``{"op": "perf", "path", "config", "iters"}`` (per-layer times, see
:meth:`_Worker.perf`), ``{"op": "shutdown"}``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

``mode`` (default ``latency``) says how a block of inferences is timed: ``latency`` runs one request
synchronously, one sample per inference (:func:`_block`); ``throughput`` keeps the compiled model's
optimal number of requests in flight, one sample per wave of that many completions, as time per
image (:class:`_ThroughputBlocks`). A sample counts as one of :class:`TimingConfig`'s iterations. The
client sends the compile properties of its mode (:func:`rlnas.oracles.profiling.metric_config`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import IO, Any

from rlnas import machinelock
from rlnas.oracles.ratios import TimingConfig, ratio_rel_error

#: ``block(n, skip)``: time ``n + skip`` samples of one model, return the last ``n`` (ms per image).
Blocks = Callable[[int, int], list[float]]


class _Worker:
    """State of the worker process: an OpenVINO core and an LRU of compiled models."""

    def __init__(self, max_compiled: int = 3) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self.compiled: OrderedDict[str, Any] = OrderedDict()
        self.max_compiled = max_compiled

    def hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "openvino": self.ov.__version__,
                "isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                "capabilities": list(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}

    def compile(self, path: str, config: dict[str, str], shape: list[int] | None = None) -> tuple[Any, float]:
        """Compiled model for (IR, config, shape), from the LRU or compiled now; and the compile
        seconds. An IR with a dynamic input is reshaped to ``shape``; a static one runs as is."""
        stat = os.stat(path)
        key = json.dumps([path, stat.st_mtime_ns, stat.st_size, config, shape], sort_keys=True)
        if key in self.compiled:
            self.compiled.move_to_end(key)
            return self.compiled[key], 0.0
        start = time.perf_counter()
        model = self.core.read_model(path)
        if shape is not None and len(model.inputs) == 1 and model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape(shape)  # only the input decides: Model.is_dynamic() also counts e.g. NMS outputs
        compiled = self.core.compile_model(model, "CPU", config)
        seconds = time.perf_counter() - start
        self.compiled[key] = compiled
        while len(self.compiled) > self.max_compiled:
            self.compiled.popitem(last=False)
        return compiled, seconds

    def request(self, compiled: Any) -> Any:
        """An infer request with random inputs set once (inputs are not part of the timing)."""
        import numpy as np

        rng = np.random.default_rng(0)
        req = compiled.create_infer_request()
        for port in compiled.inputs:
            shape = port.get_partial_shape().to_shape()
            data = rng.random(tuple(shape)).astype(port.get_element_type().to_dtype())
            req.set_tensor(port, self.ov.Tensor(data))
        return req

    def blocks(self, compiled: Any, mode: str) -> Blocks:
        """How a block of ``compiled`` is timed in ``mode`` (see the module doc)."""
        if mode == "latency":
            request = self.request(compiled)
            return lambda n, skip: _block(request, n, skip)
        if mode == "throughput":
            return _ThroughputBlocks(self.ov, compiled, self.request(compiled))
        raise ValueError(f"unknown mode {mode!r}; valid: latency, throughput")

    def measure(self, msg: dict[str, Any]) -> dict[str, Any]:
        cand, compile_s = self.compile(msg["cand"]["path"], msg["cand"]["config"], msg["cand"].get("shape"))
        ref = None
        if msg.get("ref"):
            ref, ref_compile_s = self.compile(msg["ref"]["path"], msg["ref"]["config"], msg["ref"].get("shape"))
            compile_s += ref_compile_s
        timing, mode = TimingConfig(**msg.get("timing", {})), msg.get("mode", "latency")
        held, rounds, measure_s = _timed_rounds(
            self.blocks(cand, mode), self.blocks(ref, mode) if ref is not None else None, timing, msg.get("lock_path"))
        return {
            "cand_rounds": rounds["cand"], "ref_rounds": rounds["ref"],
            "compile_s": compile_s, "measure_s": measure_s, **held,
            "kernels": kernel_summary(cand), "layer_kernels": kernel_summary(cand, by_layer=True),
            "inference_precision": precision_name(cand.get_property("INFERENCE_PRECISION_HINT")),
            "threads": int(cand.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(cand.get_property("NUM_STREAMS")), "infer_requests": infer_requests(cand, mode),
        }

    def confirm(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Time N models in interleaved rounds: every round runs one block of each model, in
        :func:`round_order`. Stops as :class:`TimingConfig` says, counting rounds and the first
        model's iterations; the reply carries each round's order."""
        compiled, compile_s = {}, 0.0
        for name, spec in msg["models"].items():
            model = self.core.read_model(spec["path"])
            if spec.get("shape") and model.inputs[0].get_partial_shape().is_dynamic:
                model.reshape(spec["shape"])
            start = time.perf_counter()
            compiled[name] = self.core.compile_model(model, "CPU", spec["config"])
            compile_s += time.perf_counter() - start
        timing, mode = TimingConfig(**msg.get("timing", {})), msg.get("mode", "latency")
        blocks = {name: self.blocks(c, mode) for name, c in compiled.items()}
        held, rounds, orders, measure_s = _interleaved_rounds(blocks, timing, msg.get("lock_path"),
                                                              lead=next(iter(blocks)))
        return {"rounds": rounds, "orders": orders, "compile_s": compile_s, "measure_s": measure_s, **held,
                "kernels": {name: kernel_summary(c) for name, c in compiled.items()},
                "layer_kernels": {name: kernel_summary(c, by_layer=True) for name, c in compiled.items()},
                "inference_precision": {name: precision_name(c.get_property("INFERENCE_PRECISION_HINT"))
                                        for name, c in compiled.items()},
                "streams": {name: int(c.get_property("NUM_STREAMS")) for name, c in compiled.items()},
                "infer_requests": {name: infer_requests(c, mode) for name, c in compiled.items()}}

    def perf(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Per-layer times (OpenVINO ``PERF_COUNT``) of one IR: ``iters`` inferences after a
        warm-up, each executed node's real time summed, with its type, the kernel it ran
        (``exec_type``) and the original layers fused into it; plus the conv/FC layers of the IR
        itself (name, type, weight shape), so callers can tell 1x1, 3x3, grouped and FC apart."""
        model = self.core.read_model(msg["path"])
        layers = {op.get_friendly_name(): {"type": op.get_type_name(),
                                           "weights": [int(d) for d in op.input(1).get_partial_shape().to_shape()]}
                  for op in model.get_ordered_ops()
                  if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
                  and op.input(1).get_partial_shape().is_static}
        compiled = self.core.compile_model(model, "CPU", {**msg["config"], "PERF_COUNT": "YES"})
        fused = {op.get_friendly_name(): str(op.get_rt_info()["originalLayersNames"].astype(str)).split(",")
                 for op in compiled.get_runtime_model().get_ordered_ops() if "originalLayersNames" in op.get_rt_info()}
        req = self.request(compiled)
        _block(req, int(msg.get("warmup", 20)), 0)
        totals: dict[str, dict[str, Any]] = {}
        iters = int(msg.get("iters", 200))
        for _ in range(iters):
            req.infer()
            for info in req.get_profiling_info():
                if str(info.status).endswith("EXECUTED"):
                    row = totals.setdefault(info.node_name, {"node_type": info.node_type, "exec_type": info.exec_type,
                                                              "us": 0.0, "fused": fused.get(info.node_name, [])})
                    row["us"] += info.real_time.total_seconds() * 1e6
        return {"nodes": {k: {**v, "us": v["us"] / iters} for k, v in totals.items()}, "layers": layers,
                "iters": iters}


class _ThroughputBlocks:
    """Blocks of one compiled model in throughput mode: its optimal number of requests (``nireq``)
    kept in flight, all on the same random input. A block fills the queue, then times waves of
    ``nireq`` new starts (each start waits for a request to complete, so a wave is ``nireq``
    completions in the steady state) and drains it; a sample is a wave's time per image (ms)."""

    def __init__(self, ov: Any, compiled: Any, inputs: Any) -> None:
        self.queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        for i in range(len(self.queue)):
            for port in compiled.inputs:
                self.queue[i].set_tensor(port, inputs.get_tensor(port))

    def __call__(self, n: int, skip: int) -> list[float]:
        size = len(self.queue)
        for _ in range(size):  # the fill: not timed, every request busy afterwards
            self.queue.start_async()
        times = []
        start = time.perf_counter()
        for i in range(n + skip):
            for _ in range(size):
                self.queue.start_async()
            now = time.perf_counter()
            if i >= skip:
                times.append((now - start) * 1e3 / size)
            start = now
        self.queue.wait_all()
        return times


def infer_requests(compiled: Any, mode: str) -> int:
    """How many requests a block of ``mode`` keeps in flight."""
    return int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if mode == "throughput" else 1


def precision_name(value: Any) -> str:
    """``ov.Type.f32`` (or its string) -> ``"f32"``."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def kernel_summary(compiled: Any, by_layer: bool = False) -> dict[str, int]:
    """Counter of oneDNN/plugin primitive types (e.g. ``jit_avx2_I8``) of the executed graph;
    ``by_layer`` counts ``<layer type>:<primitive type>`` (e.g. ``Reduce:jit_avx512_I8``): the ISA
    cap binds oneDNN's primitives, not every kernel of OpenVINO's own, so which layer ran it matters."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "primitiveType" in info:
            kernel = info["primitiveType"].astype(str)
            if by_layer:
                kernel = f"{info['layerType'].astype(str) if 'layerType' in info else '?'}:{kernel}"
            counts[kernel] += 1
    return dict(sorted(counts.items()))


def _block(req: Any, n: int, skip: int) -> list[float]:
    times = []
    for i in range(n + skip):
        start = time.perf_counter()
        req.infer()
        if i >= skip:
            times.append((time.perf_counter() - start) * 1e3)
    return times


@contextlib.contextmanager
def _machine_lock(lock_path: str | None) -> Iterator[machinelock.Waited]:
    """Hold the machine-wide timing lock alone (none without a path); yields how long it took to get."""
    with machinelock.exclusive(lock_path) as waited:
        yield waited


def round_order(names: list[str], r: int) -> list[str]:
    """The order of the models in round ``r``: rotated by one every two rounds and reversed in
    every other round, so that no model always runs first or after the same one. Over ``2 N``
    rounds each model takes every position equally often (N=2: ab, ba, ba, ab; N=3 runs all six
    permutations)."""
    k = (r // 2) % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def _timed_rounds(cand: Blocks, ref: Blocks | None, timing: TimingConfig,
                  lock_path: str | None) -> tuple[dict[str, float], dict[str, list[list[float]]], float]:
    """Warm up and time interleaved rounds of (reference, candidate) under the machine-wide lock.

    Returns (the hold as :func:`_interleaved_rounds` gives it, {"cand": [...], "ref": [...]}
    block times per round, seconds measured); the reference's times are empty without a reference.
    """
    blocks = {"ref": ref, "cand": cand} if ref is not None else {"cand": cand}
    held, rounds, _, measured = _interleaved_rounds(blocks, timing, lock_path, "cand", "ref" if ref is not None else None)
    rounds.setdefault("ref", [])
    return held, rounds, measured


def _interleaved_rounds(blocks: dict[str, Blocks], timing: TimingConfig, lock_path: str | None,
                        lead: str, ref: str | None = None
                        ) -> tuple[dict[str, float], dict[str, list[list[float]]], list[list[str]], float]:
    """Warm up, then time rounds of one block per model in :func:`round_order` under the lock,
    until :func:`_done` for ``lead``'s rounds (against ``ref``'s, if given). Returns (the hold:
    ``lock_wait_s`` and the wall-clock ``timed_from``/``timed_to`` of the timed section, both
    taken while the lock is held alone, so that the spans of all timings on a machine are
    disjoint; block times per model and round; the order of each round; seconds measured)."""
    names = list(blocks)
    with _machine_lock(lock_path) as waited:
        held_from = time.time()  # wall clock (comparable across processes), the lock held alone
        start = time.perf_counter()
        for name in names:
            blocks[name](timing.warmup_iters, 0)
        rounds: dict[str, list[list[float]]] = {name: [] for name in names}
        orders: list[list[str]] = []
        while not _done(rounds[lead], rounds[ref] if ref else [], time.perf_counter() - start, timing):
            orders.append(round_order(names, len(orders)))
            for name in orders[-1]:
                rounds[name].append(blocks[name](timing.block_iters, timing.block_skip))
        measured = time.perf_counter() - start
        held = {"lock_wait_s": waited.seconds, "timed_from": held_from, "timed_to": time.time()}
    return held, rounds, orders, measured


def _done(cand: list[list[float]], ref: list[list[float]], elapsed: float, timing: TimingConfig) -> bool:
    if elapsed >= timing.max_time_s or len(cand) >= timing.max_rounds:
        return True
    iters = sum(len(r) for r in cand)
    if len(cand) < timing.min_rounds or iters < timing.min_iters or elapsed < timing.min_time_s:
        return False
    if timing.target_rel_error is None or not ref:
        return True
    return ratio_rel_error(cand, ref) <= timing.target_rel_error


def _serve(proto: IO[str]) -> None:
    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    worker = _Worker()
    reply({"ok": True, "op": "hello", **worker.hello()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "shutdown":
                reply({"ok": True})
                return
            if op == "ping":
                reply({"ok": True, **worker.hello()})
            elif op == "measure":
                reply({"ok": True, **worker.measure(msg)})
            elif op == "confirm":
                reply({"ok": True, **worker.confirm(msg)})
            elif op == "perf":
                reply({"ok": True, **worker.perf(msg)})
            else:
                reply({"ok": False, "error": f"unknown op {op!r}; valid: ping, measure, confirm, perf, shutdown"})
        except Exception as err:  # a bad model must not kill the worker
            reply({"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})


def main() -> None:
    # `import openvino` sends telemetry from a thread by forking (multiprocessing): the child can
    # deadlock on sys.stdin's lock, held by the request loop, and outlive a killed worker; it also
    # competes with the timing. Without the package, every openvino import site uses its stub.
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(proto_fd, "w") as proto:
        _serve(proto)


if __name__ == "__main__":
    main()
