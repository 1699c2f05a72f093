"""The timing worker: a long-lived subprocess per device profile, and its client.

``ONEDNN_MAX_CPU_ISA`` is read once when OpenVINO loads, so each profile gets its own process,
started with the cap in its environment. Protocol: one JSON object per line; requests on stdin,
replies on a private copy of the original stdout (fd 1 itself is pointed at stderr so that
anything OpenVINO prints cannot corrupt the protocol). The worker never imports torch.

Requests: ``{"op": "ping"}``, ``{"op": "measure", "cand": {"path", "config", "shape"}, "ref": ...|null,
"timing", "lock_path"}`` (see :meth:`_Worker.measure`), ``{"op": "confirm", "models": {name: {"path",
"config", "shape"}}, "timing", "lock_path"}`` (N models in interleaved rounds, see
:meth:`_Worker.confirm`), ``{"op": "perf", "path", "config", "iters"}`` (per-layer times, see
:meth:`_Worker.perf`), ``{"op": "shutdown"}``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rlnas import machinelock
from rlnas.errors import ConfigError

#: Machine-wide lock taken around every timing run, so measurements never overlap.
DEFAULT_LOCK_PATH = machinelock.DEFAULT_PATH


@dataclass(frozen=True)
class TimingConfig:
    """How long to time: warm-up, then rounds of (reference block, candidate block).

    Blocks alternate order every round (ref-cand, cand-ref, ...) so neither model always runs on
    caches the other just warmed. Timing stops once ``min_rounds``, ``min_iters`` candidate
    inferences and ``min_time_s`` are all reached and, with a reference, the relative standard
    error of the ratio (see :func:`ratio_rel_error`) is at most ``target_rel_error`` (None = no
    such condition); or at ``max_time_s`` / ``max_rounds``, whichever comes first. So a noisy
    machine gets longer measurements instead of worse ratios. ``block_skip`` inferences at the
    start of each block are run but not recorded (cold caches after switching models).
    """

    warmup_iters: int = 10
    block_iters: int = 10
    block_skip: int = 1
    min_rounds: int = 5
    max_rounds: int = 10_000
    min_iters: int = 50
    min_time_s: float = 1.0
    max_time_s: float = 60.0
    target_rel_error: float | None = None

    def __post_init__(self) -> None:
        at_least = {"warmup_iters": 0, "block_iters": 1, "block_skip": 0, "min_rounds": 1, "max_rounds": 1,
                    "min_iters": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}={value!r}: an integer >= {low}")
        if self.block_skip >= self.block_iters:
            raise ConfigError(f"block_skip={self.block_skip} must be below block_iters={self.block_iters}")
        if self.max_rounds < self.min_rounds:
            raise ConfigError(f"max_rounds={self.max_rounds} must be >= min_rounds={self.min_rounds}")
        if not 0 <= self.min_time_s <= self.max_time_s or self.max_time_s <= 0:
            raise ConfigError(f"min_time_s={self.min_time_s}, max_time_s={self.max_time_s}: need "
                              "0 <= min_time_s <= max_time_s and max_time_s > 0")
        if self.target_rel_error is not None and not self.target_rel_error > 0:
            raise ConfigError(f"target_rel_error={self.target_rel_error}: null or a number > 0")


def round_ratios(cand_rounds: list[list[float]], ref_rounds: list[list[float]]) -> list[float]:
    """Per-round ratio of the candidate's to the reference's 10th-percentile time."""
    import numpy as np

    return [float(np.percentile(c, 10) / np.percentile(r, 10))
            for c, r in zip(cand_rounds, ref_rounds, strict=False)]


def ratio_rel_error(cand_rounds: list[list[float]], ref_rounds: list[list[float]]) -> float:
    """Relative standard error of the median per-round ratio, from its MAD (robust to bursts)."""
    import numpy as np

    ratios = np.asarray(round_ratios(cand_rounds, ref_rounds))
    if len(ratios) < 3:
        return float("inf")
    median = float(np.median(ratios))
    mad_sigma = 1.4826 * float(np.median(np.abs(ratios - median)))
    return 1.2533 * mad_sigma / np.sqrt(len(ratios)) / median


# ----------------------------------------------------------------------------- worker side


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

    def measure(self, msg: dict[str, Any]) -> dict[str, Any]:
        cand, compile_s = self.compile(msg["cand"]["path"], msg["cand"]["config"], msg["cand"].get("shape"))
        ref = None
        if msg.get("ref"):
            ref, ref_compile_s = self.compile(msg["ref"]["path"], msg["ref"]["config"], msg["ref"].get("shape"))
            compile_s += ref_compile_s
        timing = TimingConfig(**msg.get("timing", {}))
        held, rounds, measure_s = _timed_rounds(
            self.request(cand), self.request(ref) if ref is not None else None, timing, msg.get("lock_path"))
        return {
            "cand_rounds": rounds["cand"], "ref_rounds": rounds["ref"],
            "compile_s": compile_s, "measure_s": measure_s, **held,
            "kernels": kernel_summary(cand), "layer_kernels": kernel_summary(cand, by_layer=True),
            "inference_precision": precision_name(cand.get_property("INFERENCE_PRECISION_HINT")),
            "threads": int(cand.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(cand.get_property("NUM_STREAMS")),
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
        timing = TimingConfig(**msg.get("timing", {}))
        requests = {name: self.request(c) for name, c in compiled.items()}
        held, rounds, orders, measure_s = _interleaved_rounds(requests, timing, msg.get("lock_path"),
                                                              lead=next(iter(requests)))
        return {"rounds": rounds, "orders": orders, "compile_s": compile_s, "measure_s": measure_s, **held,
                "kernels": {name: kernel_summary(c) for name, c in compiled.items()},
                "layer_kernels": {name: kernel_summary(c, by_layer=True) for name, c in compiled.items()},
                "inference_precision": {name: precision_name(c.get_property("INFERENCE_PRECISION_HINT"))
                                        for name, c in compiled.items()}}


    def throughput(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Frames per second of each IR in OpenVINO's throughput mode (``PERFORMANCE_HINT:
        THROUGHPUT``, the plugin's optimal number of async requests), measured ``repeats`` times in
        alternation for ``seconds`` each, under the lock."""
        config = {**msg["config"], "PERFORMANCE_HINT": "THROUGHPUT"}
        config.pop("NUM_STREAMS", None)
        compiled = {name: self.core.compile_model(self.core.read_model(path), "CPU", config)
                    for name, path in msg["models"].items()}
        fps: dict[str, list[float]] = {name: [] for name in compiled}
        with _machine_lock(msg.get("lock_path")):
            for _ in range(int(msg.get("repeats", 3))):
                for name, model in compiled.items():
                    fps[name].append(_async_fps(self.ov, model, self.request, float(msg.get("seconds", 3.0))))
        return {"fps": fps, "nireq": {n: int(c.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                                      for n, c in compiled.items()},
                "streams": {n: int(c.get_property("NUM_STREAMS")) for n, c in compiled.items()}}

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


def _async_fps(ov: Any, compiled: Any, request: Any, seconds: float) -> float:
    """Completed inferences per second with the optimal number of requests in flight."""
    queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    inputs = request(compiled)
    for i in range(len(queue)):
        for port in compiled.inputs:
            queue[i].set_tensor(port, inputs.get_tensor(port))
    for _ in range(2 * len(queue)):  # warm-up
        queue.start_async()
    queue.wait_all()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async()
        done += 1
    queue.wait_all()
    return done / (time.perf_counter() - start)


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


def _timed_rounds(cand: Any, ref: Any | None, timing: TimingConfig,
                  lock_path: str | None) -> tuple[dict[str, float], dict[str, list[list[float]]], float]:
    """Warm up and time interleaved rounds of (reference, candidate) under the machine-wide lock.

    Returns (the hold as :func:`_interleaved_rounds` gives it, {"cand": [...], "ref": [...]}
    block times per round, seconds measured); the reference's times are empty without a reference.
    """
    requests = {"ref": ref, "cand": cand} if ref is not None else {"cand": cand}
    held, rounds, _, measured = _interleaved_rounds(requests, timing, lock_path, "cand", "ref" if ref else None)
    rounds.setdefault("ref", [])
    return held, rounds, measured


def _interleaved_rounds(requests: dict[str, Any], timing: TimingConfig, lock_path: str | None,
                        lead: str, ref: str | None = None
                        ) -> tuple[dict[str, float], dict[str, list[list[float]]], list[list[str]], float]:
    """Warm up, then time rounds of one block per model in :func:`round_order` under the lock,
    until :func:`_done` for ``lead``'s rounds (against ``ref``'s, if given). Returns (the hold:
    ``lock_wait_s`` and the wall-clock ``timed_from``/``timed_to`` of the timed section, both
    taken while the lock is held alone, so that the spans of all timings on a machine are
    disjoint; block times per model and round; the order of each round; seconds measured)."""
    names = list(requests)
    with _machine_lock(lock_path) as waited:
        held_from = time.time()  # wall clock (comparable across processes), the lock held alone
        start = time.perf_counter()
        for name in names:
            _block(requests[name], timing.warmup_iters, 0)
        rounds: dict[str, list[list[float]]] = {name: [] for name in names}
        orders: list[list[str]] = []
        while not _done(rounds[lead], rounds[ref] if ref else [], time.perf_counter() - start, timing):
            orders.append(round_order(names, len(orders)))
            for name in orders[-1]:
                rounds[name].append(_block(requests[name], timing.block_iters, timing.block_skip))
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
            elif op == "throughput":
                reply({"ok": True, **worker.throughput(msg)})
            else:
                reply({"ok": False, "error": f"unknown op {op!r}; valid: ping, measure, confirm, perf, throughput, shutdown"})
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


# ----------------------------------------------------------------------------- client side


class WorkerError(RuntimeError):
    """The worker answered with an error (it is still alive)."""


class WorkerCrashed(RuntimeError):
    """The worker process died; the client restarts it on the next request."""


class WorkerTimeout(RuntimeError):
    """A request took longer than its timeout; the worker was killed."""


@dataclass
class WorkerClient:
    """Owns one worker subprocess: starts it with ``env`` on top of ours, restarts it when dead.

    :param env: variables to set (e.g. ``ONEDNN_MAX_CPU_ISA``); :attr:`unset_env` are removed
        first so a cap in our own environment never leaks into an uncapped profile.
    :param log_path: the worker's stderr (OpenVINO/NNCF chatter, tracebacks); None = inherit.
    """

    env: dict[str, str]
    log_path: Path | None = None
    start_timeout_s: float = 120.0
    unset_env: tuple[str, ...] = ("ONEDNN_MAX_CPU_ISA",)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self.hello: dict[str, Any] = {}
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> dict[str, Any]:
        """Start the worker if it is not running; return its hello (pid, versions, ISA env)."""
        if self.alive():
            return self.hello
        if self._proc is not None:
            self.restarts += 1
            self._reap()
        env = {k: v for k, v in os.environ.items() if k not in self.unset_env}
        env.update(self.env)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with contextlib.ExitStack() as stack:
            stderr = None
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                stderr = stack.enter_context(open(self.log_path, "ab"))
            self._proc = subprocess.Popen([sys.executable, "-m", "rlnas.oracles.worker"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self._buffer = b""
        self.hello = self._read(self.start_timeout_s)
        return self.hello

    def ensure_started(self, ping_timeout_s: float = 30.0) -> dict[str, Any]:
        """Start the worker, or check with a ping that it is still there (a worker that died
        while idle must not fail the next request); restart it if not."""
        if self.alive():
            try:
                self._send({"op": "ping"}, ping_timeout_s)
            except (WorkerCrashed, WorkerTimeout):
                self.kill()
        return self.start()

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its reply; raises WorkerError/WorkerCrashed/WorkerTimeout."""
        self.ensure_started()
        return self._send(msg, timeout_s)

    def _send(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerCrashed(self._crash_reason()) from None
        reply = self._read(timeout_s)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "unknown worker error"))
        return reply

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerTimeout(f"worker request timed out after {timeout_s:g} s (worker killed)")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise WorkerCrashed(self._crash_reason())
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _crash_reason(self) -> str:
        code = self._proc.wait(timeout=10) if self._proc is not None else None
        reason = f"worker died (exit code {code})"
        if code is not None and code < 0:
            reason += f" by signal {signal.Signals(-code).name}"
        return reason + self._log_tail()

    def _log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return (": " + " | ".join(tail)) if tail else ""

    def kill(self) -> None:
        """Kill the worker now (it restarts on the next request)."""
        if self.alive():
            assert self._proc is not None
            self._proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(BrokenPipeError):  # a killed worker's pipe
                        stream.close()

    def close(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.alive():
            with contextlib.suppress(WorkerError, WorkerCrashed, WorkerTimeout):
                self._send({"op": "shutdown"}, timeout_s=10)
        self.kill()
        self._proc = None


if __name__ == "__main__":
    main()
