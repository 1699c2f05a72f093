"""The report and the result table say which latency metric their times and ratios are."""

from __future__ import annotations

from rlnas.arch import Arch
from rlnas.report import comparison_rows, write_report
from rlnas.search.callbacks import _arch_text
from rlnas.search.measurement import Measurement

ARCH = Arch("resnet_tiny", (1, 1), (8, 16), ())


def labels(metric: str) -> list[str]:
    m = Measurement(arch=ARCH, latency_ms=0.5, ref_latency_ms=1.0, latency_ratio=0.5, latency_metric=metric)
    return [row[0] for row in comparison_rows(m, m)]


def test_result_table_names_the_metric():
    assert {"INT8 latency (ms)", "latency ratio to a0 (interleaved)"} <= set(labels("latency"))
    throughput = labels("throughput")
    assert {"INT8 time per image in throughput mode (ms)",
            "throughput ratio (time per image) to a0 (interleaved)"} <= set(throughput)
    assert not any("latency" in label for label in throughput)


def test_report_names_the_metric(tmp_path):
    found = {"latency_ms": 0.5, "latency_ratio": 0.5, "confirmed_ratio": 0.5, "feasible": True}
    summary = {"found": found, "baseline": {"latency_ms": 1.0}, "speedup": 2.0, "target": 0.5,
               "throughput": {"fps": {"a0": 1000.0, "exported": 2000.0}, "ratio": {"a0": 1.0, "exported": 0.5},
                              "rounds": 5, "profile": "host", "threads": 2}}
    latency = write_report(tmp_path / "latency", summary)[0].read_text()
    assert "**INT8 speed-up on the profile: 2.00x**" in latency and "INT8 latency (ms, profile)" in latency
    throughput = write_report(tmp_path / "throughput", {**summary, "latency_metric": "throughput"})[0].read_text()
    assert "**INT8 speed-up on the profile (time per image in throughput mode): 2.00x**" in throughput
    assert "INT8 time per image in throughput mode (ms, profile)" in throughput
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in throughput.splitlines()
            if line.startswith("| exported")]
    assert rows == [["exported", "2000.0", "0.500"]]


def test_tensorboard_text_names_the_metric():
    """The best and baseline architectures' TensorBoard text labels their ratio and time as the
    progress bar and the result table do."""
    latency = _arch_text(Measurement(arch=ARCH, latency_ms=0.5, latency_ratio=0.5))
    assert "latency ratio 0.5, latency 0.5 ms" in latency
    throughput = _arch_text(Measurement(arch=ARCH, latency_ms=0.5, latency_ratio=0.5, latency_metric="throughput"))
    assert "throughput ratio (time per image) 0.5, time per image in throughput mode 0.5 ms" in throughput
    assert "latency" not in throughput
