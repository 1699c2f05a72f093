"""How much of an IR's time runs above a profile's ISA cap on this host.

    .venv/bin/python experiments/cap_coverage.py --ir outputs/search/<run>/export/model.xml \
        --profiles goldmont_sse42 kabylake_avx2 icelake_vnni

``ONEDNN_MAX_CPU_ISA`` binds oneDNN's primitives (convolutions, matmuls), not the kernels the
OpenVINO CPU plugin generates itself (pooling as Reduce, quantizers, fused element-wise
subgraphs): on a host above the cap those run at the host's ISA, faster than on the CPU the profile
stands for. This prints, per profile, the time per ``<layer type>:<kernel>`` (OpenVINO's per-layer
performance counters, batch 1, the profile's threads and precision hint) and the share of the
total that ran above the cap. Run it on a quiet machine: the counters are timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from rlnas.oracles.device import host_cpu_model, kernels_above, load_profile
from rlnas.oracles.latency import LatencyOracle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ir", nargs="+", required=True, help="OpenVINO IR .xml files (INT8 as the oracle builds them)")
    p.add_argument("--profiles", nargs="+", default=["kabylake_avx2"])
    p.add_argument("--iters", type=int, default=300)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# host: {host_cpu_model()}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.profiles:
            profile = load_profile(name)
            with LatencyOracle(profile, cache_dir=scratch) as oracle:
                for ir in args.ir:
                    times = oracle.kernel_times(ir, iters=args.iters)
                    above = kernels_above(times, profile.effective_isa())
                    total, high = sum(times.values()), sum(times[k] for k in above)
                    print(f"\n## {name} (cap {profile.effective_isa()}), {ir}: {total:.3f} ms per inference, "
                          f"{high:.3f} ms ({100 * high / total:.1f} %) above the cap")
                    for kernel, ms in times.items():
                        print(f"  {ms:8.3f} ms  {100 * ms / total:5.1f} %  {kernel}{'  ABOVE' if kernel in above else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
