"""CPU device profiles: which ISA oneDNN may use, the inference precision and the thread count.

A profile emulates a smaller Intel CPU on the host by capping oneDNN's ISA with
``ONEDNN_MAX_CPU_ISA`` (read once, when OpenVINO loads, hence one worker process per profile).
Profiles live in ``conf/device/<name>.yaml``: one per CPU class oneDNN tells apart by that cap,
each naming the CPUs it stands for (``cpus``). The cap only lowers the ISA: a profile whose cap
needs CPU flags the host lacks cannot be emulated and is refused (``rlnas-profiles`` lists which
profiles this host can run). Every shipped profile uses ``threads: 2`` (this 2-core machine, and
the same count everywhere so that profiles compare), whatever core count the real CPUs have.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import rlnas
from rlnas.errors import UserError

#: oneDNN ISA names (values of ``ONEDNN_MAX_CPU_ISA``), lowest first, with every /proc/cpuinfo
#: flag each one needs: the whole chain of oneDNN's ``mayiuse`` checks, so a missing lower flag is
#: named too. AVX2 adds ``fma`` (oneDNN's AVX2 kernels use it; every AVX2 CPU has it); in oneDNN
#: 3.x AVX512_CORE_FP16 is AVX10.1/512, which also needs AVX-VNNI, and AVX512_CORE_AMX builds on
#: it (so it needs ``avx512_fp16`` and ``avx_vnni``, as Sapphire Rapids has). AMX also needs the
#: kernel to grant the tile state (Linux >= 5.16), which no flag shows.
_SSE41 = ("sse4_1",)
_AVX = _SSE41 + ("avx",)
_AVX2 = _AVX + ("avx2", "fma")
_AVX2_VNNI = _AVX2 + ("avx_vnni",)
_AVX512_CORE = _AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")
_AVX512_CORE_VNNI = _AVX512_CORE + ("avx512_vnni",)
_AVX512_CORE_BF16 = _AVX512_CORE_VNNI + ("avx512_bf16",)
_AVX512_CORE_FP16 = _AVX512_CORE_BF16 + ("avx512_fp16", "avx_vnni")
_AVX512_CORE_AMX = _AVX512_CORE_FP16 + ("amx_tile", "amx_int8", "amx_bf16")
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "SSE41": _SSE41,
    "AVX": _AVX,
    "AVX2": _AVX2,
    "AVX2_VNNI": _AVX2_VNNI,
    "AVX2_VNNI_2": _AVX2_VNNI + ("avx_vnni_int8", "avx_ne_convert"),
    "AVX512_CORE": _AVX512_CORE,
    "AVX512_CORE_VNNI": _AVX512_CORE_VNNI,
    "AVX512_CORE_BF16": _AVX512_CORE_BF16,
    "AVX512_CORE_FP16": _AVX512_CORE_FP16,
    "AVX512_CORE_AMX": _AVX512_CORE_AMX,
    "AVX512_CORE_AMX_FP16": _AVX512_CORE_AMX + ("amx_fp16",),
}
#: Every flag some ISA above needs, in first-needed order (the ones worth showing for a host).
RELEVANT_FLAGS: tuple[str, ...] = tuple(dict.fromkeys(f for flags in ISA_FLAGS.values() for f in flags))
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
#: Any one of these flags in the effective ISA lets the OpenVINO CPU plugin run that precision.
_PRECISION_FLAGS = {
    "f32": None,
    "bf16": ("avx512_bf16", "amx_bf16", "avx_ne_convert"),
    "f16": ("avx512_fp16", "amx_fp16", "avx_ne_convert"),
}


class DeviceProfileError(UserError, ValueError):
    """A device profile that is unknown, malformed or that this host cannot run."""


@dataclass(frozen=True)
class DeviceProfile:
    """How to compile and run on the CPU: ISA cap (``None`` = native), precision hint, threads.

    ``cpus`` names the real CPUs the profile stands for (documentation only: not part of
    :meth:`key`, so it never changes a cache key).
    """

    name: str
    isa: str | None = None
    inference_precision: str = "f32"
    threads: int = 2
    description: str = ""
    cpus: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        """Environment variables the worker process needs (set before openvino is imported)."""
        return {"ONEDNN_MAX_CPU_ISA": self.isa} if self.isa else {}

    def compile_config(self, inference_precision: str | None = None) -> dict[str, str]:
        """OpenVINO CPU properties, always explicit: the plugin defaults differ per host."""
        return {
            "INFERENCE_PRECISION_HINT": inference_precision or self.inference_precision,
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads),
            "PERFORMANCE_HINT": "LATENCY",
        }

    def key(self) -> dict[str, Any]:
        """The fields that change a measured number (part of every cache key)."""
        return {"name": self.name, "isa": self.isa, "inference_precision": self.inference_precision,
                "threads": self.threads}

    def effective_isa(self, flags: frozenset[str] | None = None) -> str:
        """The ISA oneDNN will use: the cap, or the best ISA of the host when uncapped."""
        return self.isa or host_max_isa(flags)

    def supports(self, inference_precision: str, flags: frozenset[str] | None = None) -> bool:
        """Whether this profile's ISA (on this host) can run ``inference_precision``."""
        needed = _PRECISION_FLAGS[inference_precision]
        if needed is None:
            return True
        isa_flags = set(ISA_FLAGS[self.effective_isa(flags)])
        return bool(isa_flags & set(needed))

    def missing_flags(self, flags: frozenset[str] | None = None) -> list[str]:
        """The /proc/cpuinfo flags the ISA cap needs and this host lacks ([] when uncapped)."""
        return missing_flags(self.isa, flags) if self.isa is not None else []

    def check_fields(self) -> None:
        """Raise DeviceProfileError if a field is malformed (whatever the host)."""
        if self.isa is not None and self.isa not in ISA_FLAGS:
            raise DeviceProfileError(f"profile {self.name!r}: unknown isa {self.isa!r}; "
                                     f"valid: {list(ISA_FLAGS)} or null for native")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise DeviceProfileError(f"profile {self.name!r}: inference_precision "
                                     f"{self.inference_precision!r} not in {INFERENCE_PRECISIONS}")
        if int(self.threads) < 1:
            raise DeviceProfileError(f"profile {self.name!r}: threads must be >= 1, got {self.threads}")

    def host_problem(self, flags: frozenset[str] | None = None) -> str | None:
        """Why this host cannot run the (well formed) profile, or None if it can."""
        missing = self.missing_flags(flags)
        if missing:
            return f"this host ({host_cpu_model()}) lacks CPU flags {missing} needed by ISA {self.isa}"
        if not self.supports(self.inference_precision, flags):
            return (f"ISA {self.effective_isa(flags)} cannot run {self.inference_precision}; "
                    "use f32 or a profile whose ISA has it")
        return None

    def validate(self, flags: frozenset[str] | None = None) -> DeviceProfile:
        """Return self if well formed and runnable on this host, else raise DeviceProfileError
        (one line: the missing CPU flags and the profiles this host can run)."""
        self.check_fields()
        problem = self.host_problem(flags)
        if problem is not None:
            raise DeviceProfileError(f"profile {self.name!r}: {problem}; "
                                     f"profiles this host can run: {runnable_profiles(flags)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The CPU's identity and flags from the text of /proc/cpuinfo (its first processor): the
    ``model name`` with the CPUID family, model and stepping, since virtual machines often give
    a Zen 2 and a Zen 4 the same bare "AMD EPYC"."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    cpuid = {"family": "cpu family", "model": "model", "stepping": "stepping"}
    signature = [f"{label} {fields[field]}" for label, field in cpuid.items() if field in fields]
    if signature:
        model = f"{model} ({', '.join(signature)})"
    return model, frozenset(fields.get("flags", "").split())


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return parse_cpuinfo("")


def host_cpu_model() -> str:
    """The host CPU as :func:`parse_cpuinfo` names it (part of every latency cache key, so two
    CPUs that share a marketing name never share a measurement)."""
    return _cpuinfo()[0]


def host_cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags from /proc/cpuinfo."""
    return _cpuinfo()[1]


def missing_flags(isa: str, flags: frozenset[str] | None = None) -> list[str]:
    """CPU flags that ``isa`` needs and the host lacks."""
    flags = host_cpu_flags() if flags is None else flags
    return [f for f in ISA_FLAGS[isa] if f not in flags]


def host_max_isa(flags: frozenset[str] | None = None) -> str:
    """The highest oneDNN ISA whose flags the host has (``SSE41`` if none, a safe floor)."""
    best = "SSE41"
    for isa in ISA_FLAGS:
        if not missing_flags(isa, flags):
            best = isa
    return best


#: The ISA families OpenVINO names its kernels by (``jit_avx2_I8``, ``brgconv_avx512_amx_I8``...).
KERNEL_ISA_RANK = {"sse42": 0, "avx": 1, "avx2": 2, "avx512": 3, "amx": 4}


def cap_rank(isa: str) -> int:
    """The kernel-name rank of a oneDNN ISA (``AVX2_VNNI`` -> that of ``avx2``)."""
    if "AMX" in isa:
        return KERNEL_ISA_RANK["amx"]
    if isa.startswith("AVX512"):
        return KERNEL_ISA_RANK["avx512"]
    return {"SSE41": 0, "AVX": 1}.get(isa, KERNEL_ISA_RANK["avx2"])


def kernel_rank(kernel: str) -> int | None:
    """The highest ISA a kernel's name says (None for ISA-neutral ones: jit_uni_*, ref_*, unknown_*)."""
    ranks = [KERNEL_ISA_RANK[t] for t in kernel.lower().replace(":", "_").split("_") if t in KERNEL_ISA_RANK]
    return max(ranks) if ranks else None


def kernels_above(kernels: Mapping[str, object] | list[str], isa: str) -> list[str]:
    """The kernels (``jit_avx512_I8`` or ``Reduce:jit_avx512_I8``) whose ISA is above ``isa``'s: a
    lower bound, since ISA-neutral names (``jit_uni_*``, ``ref_*``, ``unknown_*``) never count."""
    cap = cap_rank(isa)
    return [k for k in kernels if (kernel_rank(k.rpartition(":")[2]) or 0) > cap]


def device_conf_dir() -> Path:
    return rlnas.CONF_DIR / "device"


def list_profiles() -> list[str]:
    """Names of the profiles in conf/device/."""
    return sorted(p.stem for p in device_conf_dir().glob("*.yaml"))


@dataclass(frozen=True)
class ProfileStatus:
    """Whether this host can run a profile: the flags its ISA cap lacks, and why not (None = it can)."""

    profile: DeviceProfile
    missing: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def runs_here(self) -> bool:
        return self.problem is None


def profile_statuses(flags: frozenset[str] | None = None) -> list[ProfileStatus]:
    """Every profile of conf/device/ with whether this host (or ``flags``) can run it."""
    out = []
    for name in list_profiles():
        try:
            profile = load_profile(name, check_host=False)
            profile.check_fields()
        except DeviceProfileError as err:
            out.append(ProfileStatus(DeviceProfile(name), problem=str(err)))
            continue
        out.append(ProfileStatus(profile, tuple(profile.missing_flags(flags)), profile.host_problem(flags)))
    return out


def runnable_profiles(flags: frozenset[str] | None = None) -> list[str]:
    """Names of the conf/device/ profiles this host (or ``flags``) can run."""
    return [s.profile.name for s in profile_statuses(flags) if s.runs_here]


def profile_from_config(cfg: Mapping[str, Any], check_host: bool = True) -> DeviceProfile:
    """Build a profile from a mapping (e.g. the Hydra ``device`` node), validated."""
    known = {"name", "isa", "inference_precision", "threads", "description", "cpus"}
    unknown = set(cfg) - known
    if unknown:
        raise DeviceProfileError(f"device config has unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    if "name" not in cfg:
        raise DeviceProfileError("device config needs a name")
    profile = DeviceProfile(name=str(cfg["name"]), isa=cfg.get("isa") or None,
                            inference_precision=str(cfg.get("inference_precision", "f32")),
                            threads=int(cfg.get("threads", 2)), description=str(cfg.get("description", "")),
                            cpus=tuple(str(c) for c in (cfg.get("cpus") or ())))
    return profile.validate() if check_host else profile


def load_profile(name: str, check_host: bool = True, **overrides: Any) -> DeviceProfile:
    """Load ``conf/device/<name>.yaml``; raise naming the valid profiles if there is none.

    ``overrides`` replace fields (e.g. ``threads=4``). With ``check_host`` (default) an ISA or
    precision this host cannot run is an error.
    """
    from omegaconf import OmegaConf

    path = device_conf_dir() / f"{name}.yaml"
    if not path.is_file():
        raise DeviceProfileError(f"unknown device profile {name!r}; valid: {list_profiles()}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    profile = replace(profile_from_config(cfg, check_host=False), **overrides)
    return profile.validate() if check_host else profile
