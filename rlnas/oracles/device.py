"""CPU device profiles: which ISA oneDNN may use, the inference precision and the thread count.

A profile emulates a smaller Intel CPU on the host by capping oneDNN's ISA with
``ONEDNN_MAX_CPU_ISA`` (read once, when OpenVINO loads, hence one worker process per profile).
Profiles live in ``conf/device/<name>.yaml``.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import rlnas

#: oneDNN ISA names (values of ``ONEDNN_MAX_CPU_ISA``), lowest first, with the /proc/cpuinfo
#: flags each one needs.
_BASE_AVX512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl")
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "SSE41": ("sse4_1",),
    "AVX": ("sse4_1", "avx"),
    "AVX2": ("avx", "avx2", "fma"),
    "AVX2_VNNI": ("avx2", "fma", "avx_vnni"),
    "AVX2_VNNI_2": ("avx2", "fma", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"),
    "AVX512_CORE": _BASE_AVX512,
    "AVX512_CORE_VNNI": _BASE_AVX512 + ("avx512_vnni",),
    "AVX512_CORE_BF16": _BASE_AVX512 + ("avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": _BASE_AVX512 + ("avx512_vnni", "avx512_bf16", "avx512_fp16"),
    "AVX512_CORE_AMX": _BASE_AVX512 + ("avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"),
    "AVX512_CORE_AMX_FP16": _BASE_AVX512 + ("avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                                            "amx_int8", "amx_bf16", "amx_fp16"),
}
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
#: Any one of these flags in the effective ISA lets the OpenVINO CPU plugin run that precision.
_PRECISION_FLAGS = {
    "f32": None,
    "bf16": ("avx512_bf16", "amx_bf16", "avx_ne_convert"),
    "f16": ("avx512_fp16", "amx_fp16", "avx_ne_convert"),
}


class DeviceProfileError(ValueError):
    """A device profile that is unknown, malformed or that this host cannot run."""


@dataclass(frozen=True)
class DeviceProfile:
    """How to compile and run on the CPU: ISA cap (``None`` = native), precision hint, threads."""

    name: str
    isa: str | None = None
    inference_precision: str = "f32"
    threads: int = 2
    description: str = ""

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

    def validate(self, flags: frozenset[str] | None = None) -> DeviceProfile:
        """Return self if well formed and runnable on this host, else raise DeviceProfileError."""
        if self.isa is not None and self.isa not in ISA_FLAGS:
            raise DeviceProfileError(f"profile {self.name!r}: unknown isa {self.isa!r}; "
                                     f"valid: {list(ISA_FLAGS)} or null for native")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise DeviceProfileError(f"profile {self.name!r}: inference_precision "
                                     f"{self.inference_precision!r} not in {INFERENCE_PRECISIONS}")
        if int(self.threads) < 1:
            raise DeviceProfileError(f"profile {self.name!r}: threads must be >= 1, got {self.threads}")
        if self.isa is not None:
            try:
                check_isa(self.isa, flags)
            except DeviceProfileError as err:
                raise DeviceProfileError(f"profile {self.name!r}: {err}") from None
        if not self.supports(self.inference_precision, flags):
            raise DeviceProfileError(
                f"profile {self.name!r}: ISA {self.effective_isa(flags)} cannot run "
                f"{self.inference_precision}; use f32 or a profile whose ISA has it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, frozenset(fields.get("flags", "").split())


def host_cpu_model() -> str:
    """The host CPU's ``model name`` from /proc/cpuinfo (part of every latency cache key)."""
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


def check_isa(isa: str, flags: frozenset[str] | None = None) -> None:
    """Raise DeviceProfileError if ``isa`` is unknown or the host lacks a flag it needs."""
    if isa not in ISA_FLAGS:
        raise DeviceProfileError(f"unknown ISA {isa!r}; valid: {list(ISA_FLAGS)}")
    missing = missing_flags(isa, flags)
    if missing:
        supported = [i for i in ISA_FLAGS if not missing_flags(i, flags)]
        raise DeviceProfileError(
            f"this host ({host_cpu_model()}) lacks {missing} needed by ISA {isa}; "
            f"ISAs it can run: {supported}")


def device_conf_dir() -> Path:
    return rlnas.CONF_DIR / "device"


def list_profiles() -> list[str]:
    """Names of the profiles in conf/device/."""
    return sorted(p.stem for p in device_conf_dir().glob("*.yaml"))


def profile_from_config(cfg: Mapping[str, Any], check_host: bool = True) -> DeviceProfile:
    """Build a profile from a mapping (e.g. the Hydra ``device`` node), validated."""
    known = {"name", "isa", "inference_precision", "threads", "description"}
    unknown = set(cfg) - known
    if unknown:
        raise DeviceProfileError(f"device config has unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    if "name" not in cfg:
        raise DeviceProfileError("device config needs a name")
    profile = DeviceProfile(name=str(cfg["name"]), isa=cfg.get("isa") or None,
                            inference_precision=str(cfg.get("inference_precision", "f32")),
                            threads=int(cfg.get("threads", 2)), description=str(cfg.get("description", "")))
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
