"""Device profiles: loading, ISA checks against CPU flags, compile properties, Hydra composition."""

from __future__ import annotations

import pytest
import yaml

import rlnas
from rlnas.oracles.device import (
    ISA_FLAGS,
    DeviceProfile,
    DeviceProfileError,
    check_isa,
    host_cpu_flags,
    host_cpu_model,
    host_max_isa,
    list_profiles,
    load_profile,
    profile_from_config,
)

AVX2_HOST = frozenset({"sse4_1", "avx", "avx2", "fma"})
ICELAKE_HOST = AVX2_HOST | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}
SPR_HOST = ICELAKE_HOST | {"avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}


def test_shipped_profiles_state_threads_and_precision_explicitly():
    assert {"host", "kabylake_avx2", "icelake_vnni"} <= set(list_profiles())
    for name in ("host", "kabylake_avx2", "icelake_vnni"):
        raw = yaml.safe_load((rlnas.CONF_DIR / "device" / f"{name}.yaml").read_text())
        assert raw["name"] == name
        assert {"isa", "inference_precision", "threads"} <= set(raw)
        assert raw["threads"] == 2 and raw["inference_precision"] == "f32"


def test_profile_values():
    kaby = load_profile("kabylake_avx2", check_host=False)
    ice = load_profile("icelake_vnni", check_host=False)
    assert kaby.isa == "AVX2" and kaby.env() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert ice.isa == "AVX512_CORE_VNNI" and ice.env() == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    host = load_profile("host")
    assert host.isa is None and host.env() == {}
    assert load_profile("host", threads=4).threads == 4


def test_compile_config_is_explicit():
    cfg = DeviceProfile("x", "AVX2", "f32", threads=3).compile_config()
    assert cfg == {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "3",
                   "PERFORMANCE_HINT": "LATENCY"}
    assert DeviceProfile("x").compile_config("bf16")["INFERENCE_PRECISION_HINT"] == "bf16"


def test_unknown_profile_names_valid_ones():
    with pytest.raises(DeviceProfileError, match="kabylake_avx2"):
        load_profile("skylake")


def test_isa_checks_against_flags():
    check_isa("AVX2", AVX2_HOST)
    with pytest.raises(DeviceProfileError, match="avx512_vnni"):
        check_isa("AVX512_CORE_VNNI", AVX2_HOST | {"avx512f", "avx512bw", "avx512dq", "avx512vl"})
    with pytest.raises(DeviceProfileError, match="avx2"):
        check_isa("AVX2", frozenset({"sse4_1", "avx"}))
    with pytest.raises(DeviceProfileError, match="AVX512_CORE_VNNI"):
        check_isa("AVX3", AVX2_HOST)
    assert host_max_isa(AVX2_HOST) == "AVX2"
    assert host_max_isa(ICELAKE_HOST) == "AVX512_CORE_VNNI"
    assert host_max_isa(SPR_HOST) == "AVX512_CORE_AMX"


def test_profile_validation_on_fake_hosts():
    ice = load_profile("icelake_vnni", check_host=False)
    ice.validate(ICELAKE_HOST)
    with pytest.raises(DeviceProfileError, match="icelake_vnni.*lacks"):
        ice.validate(AVX2_HOST)
    assert not ice.supports("bf16", SPR_HOST)  # capped at VNNI: no BF16 even on a BF16 host
    assert DeviceProfile("host").supports("bf16", SPR_HOST)
    with pytest.raises(DeviceProfileError, match="cannot run bf16"):
        DeviceProfile("k", "AVX2", "bf16").validate(SPR_HOST)
    with pytest.raises(DeviceProfileError, match="inference_precision"):
        DeviceProfile("k", None, "fp8").validate(SPR_HOST)
    with pytest.raises(DeviceProfileError, match="threads"):
        DeviceProfile("k", None, "f32", threads=0).validate(SPR_HOST)


def test_host_profile_matches_this_machine():
    assert host_cpu_model()
    assert host_cpu_flags()
    for isa in ISA_FLAGS:
        if host_max_isa() == isa:
            check_isa(isa)
    icelake = load_profile("icelake_vnni", check_host=False)
    if "avx512_vnni" in host_cpu_flags():
        load_profile("icelake_vnni")
    else:
        with pytest.raises(DeviceProfileError, match="lacks"):
            icelake.validate()


def test_profile_from_config_rejects_unknown_keys():
    with pytest.raises(DeviceProfileError, match="unknown keys"):
        profile_from_config({"name": "x", "isa": None, "threads": 2, "cores": 4})


def test_latency_config_composes_with_device_group():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="latency", overrides=["device=kabylake_avx2", "device.threads=4"])
    assert cfg.device.name == "kabylake_avx2" and cfg.device.threads == 4
    assert list(cfg.profiles) == ["kabylake_avx2"]
    assert profile_from_config(cfg.device, check_host=False).isa == "AVX2"
