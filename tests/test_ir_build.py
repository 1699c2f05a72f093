"""One network, one graph: the IR the search times (converted at batch 1) and the IR a finalist,
a0 or the export is timed from (converted with a dynamic batch for scoring, quantized, then
reshaped to batch 1) hold the same operations with the same shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from rlnas.oracles.irbuild import QuantizationConfig, build_ir
from rlnas.ovtools import convert_to_openvino, quantize_int8, reshaped, save_ir
from rlnas.spaces import create_supernet

SIZE = 32


def graph(model) -> list[tuple[str, tuple]]:
    return sorted((op.get_type_name(), tuple(tuple(str(d) for d in out.get_partial_shape()) for out in op.outputs()))
                  for op in model.get_ops() if op.get_type_name() != "Constant")


@pytest.mark.parametrize("family", ["resnet_tiny", "mobilenet_tiny", "ssd_tiny"])
def test_search_and_finalist_irs_are_one_graph(family: str, tmp_path: Path) -> None:
    supernet = create_supernet(family, num_classes=3).eval()
    net = supernet.extract(supernet.space.min_arch()).eval()
    build_ir(net, (1, 3, SIZE, SIZE), "int8", tmp_path / "search.xml", None, QuantizationConfig())
    rng = np.random.default_rng(0)
    scored = quantize_int8(convert_to_openvino(net, SIZE),
                           [rng.standard_normal((2, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2)])
    save_ir(reshaped(scored, [1, 3, SIZE, SIZE]), tmp_path / "finalist.xml", False)
    core = ov.Core()
    search, finalist = (core.read_model(tmp_path / f"{name}.xml") for name in ("search", "finalist"))
    assert not {"ShapeOf", "Gather"} & {op.get_type_name() for op in finalist.get_ops()}
    assert graph(finalist) == graph(search)


def test_the_shared_core_is_released_at_exit_before_the_interpreters_teardown(tmp_path: Path) -> None:
    # atexit runs handlers last-registered-first: this check, registered before ovtools is imported,
    # runs after ovtools' release_core, while a compiled model is still held by a global
    program = """
import atexit
atexit.register(lambda: print("core held at exit:", ovtools._core.cache_info().currsize))
import openvino as ov
import openvino.opset13 as ops
from rlnas import ovtools
x = ops.parameter([1, 3, 8, 8], ov.Type.f32)
compiled = ovtools.compile_cpu(ov.Model([ops.relu(x)], [x]), 1, 8)
print("core held before exit:", ovtools._core.cache_info().currsize)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["core held before exit: 1", "core held at exit: 0"]
