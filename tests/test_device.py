"""Device profiles: loading, ISA checks against CPU flags, compile properties, Hydra composition,
the ``rlnas-profiles`` listing, and (real OpenVINO) that an ISA-capped worker runs capped kernels."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

import rlnas
from rlnas.oracles.device import (
    ISA_FLAGS,
    KERNEL_ISA_RANK,
    DeviceProfile,
    DeviceProfileError,
    cap_rank,
    host_cpu_flags,
    host_cpu_model,
    host_max_isa,
    kernel_rank,
    kernels_above,
    list_profiles,
    load_profile,
    missing_flags,
    parse_cpuinfo,
    profile_from_config,
    profile_statuses,
    runnable_profiles,
)

GOLDMONT_HOST = frozenset({"sse4_1", "sse4_2"})
AVX2_HOST = frozenset({"sse4_1", "avx", "avx2", "fma"})
ALDERLAKE_HOST = AVX2_HOST | {"avx_vnni"}
ICELAKE_HOST = AVX2_HOST | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}
# Sapphire Rapids also has AVX-VNNI, which oneDNN's AVX512_CORE_FP16 (and so AMX) level requires.
SPR_HOST = ICELAKE_HOST | {"avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}

#: The ladder: profile -> oneDNN ISA cap, and the flags the issue says each cap needs at least.
LADDER = {
    "goldmont_sse42": ("SSE41", {"sse4_1"}),
    "kabylake_avx2": ("AVX2", {"avx2"}),
    "alderlake_avx2_vnni": ("AVX2_VNNI", {"avx2", "avx_vnni"}),
    "skylake_avx512": ("AVX512_CORE", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
    "icelake_vnni": ("AVX512_CORE_VNNI", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}),
    "sapphirerapids_amx": ("AVX512_CORE_AMX", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
                                               "amx_tile", "amx_int8", "amx_bf16"}),
    "host": (None, set()),
}


def test_shipped_profiles_state_threads_and_precision_explicitly():
    assert set(list_profiles()) == set(LADDER)
    for name in list_profiles():
        raw = yaml.safe_load((rlnas.CONF_DIR / "device" / f"{name}.yaml").read_text())
        assert raw["name"] == name
        assert {"isa", "inference_precision", "threads", "cpus", "description"} <= set(raw)
        assert raw["threads"] == 2 and raw["inference_precision"] == "f32"
        assert raw["isa"] == LADDER[name][0]
        assert raw["cpus"] or raw["isa"] is None, f"{name} names no real CPU"
        profile = load_profile(name, check_host=False)
        assert profile.cpus == tuple(raw["cpus"]) and "cpus" not in profile.key()
    amx = (rlnas.CONF_DIR / "device" / "sapphirerapids_amx.yaml").read_text()
    assert "bf16" in amx  # says that OpenVINO would default to bf16 there


def test_every_cap_needs_at_least_the_flags_the_issue_names():
    for name, (isa, needed) in LADDER.items():
        if isa is not None:
            assert needed <= set(ISA_FLAGS[isa]), name
    # each level needs everything the levels below it need (so a lacking lower flag is named too)
    assert set(ISA_FLAGS["SSE41"]) <= set(ISA_FLAGS["AVX2"]) <= set(ISA_FLAGS["AVX2_VNNI"])
    assert set(ISA_FLAGS["AVX2"]) <= set(ISA_FLAGS["AVX512_CORE"]) <= set(ISA_FLAGS["AVX512_CORE_VNNI"])
    assert set(ISA_FLAGS["AVX512_CORE_VNNI"]) <= set(ISA_FLAGS["AVX512_CORE_AMX"])


def test_missing_flags_per_profile_on_fake_hosts():
    def missing(name, flags):
        return load_profile(name, check_host=False).missing_flags(flags)

    assert missing("goldmont_sse42", AVX2_HOST) == [] and missing("host", GOLDMONT_HOST) == []
    assert missing("kabylake_avx2", GOLDMONT_HOST) == ["avx", "avx2", "fma"]
    assert missing("alderlake_avx2_vnni", AVX2_HOST) == ["avx_vnni"]
    assert missing("skylake_avx512", ALDERLAKE_HOST) == ["avx512f", "avx512bw", "avx512dq", "avx512vl"]
    assert missing("icelake_vnni", AVX2_HOST) == ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"]
    assert missing("sapphirerapids_amx", ICELAKE_HOST) == ["avx512_bf16", "avx512_fp16", "avx_vnni",
                                                           "amx_tile", "amx_int8", "amx_bf16"]
    assert runnable_profiles(GOLDMONT_HOST) == ["goldmont_sse42", "host"]
    assert runnable_profiles(ALDERLAKE_HOST) == ["alderlake_avx2_vnni", "goldmont_sse42", "host", "kabylake_avx2"]
    assert runnable_profiles(ICELAKE_HOST) == ["goldmont_sse42", "host", "icelake_vnni", "kabylake_avx2",
                                               "skylake_avx512"]
    assert runnable_profiles(SPR_HOST) == list_profiles()


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
    assert missing_flags("AVX2", AVX2_HOST) == []
    assert missing_flags("AVX512_CORE_VNNI", AVX2_HOST | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}) == [
        "avx512_vnni"]
    assert missing_flags("AVX2", frozenset({"sse4_1", "avx"})) == ["avx2", "fma"]
    with pytest.raises(DeviceProfileError, match="lacks.*avx512_vnni.*profiles this host can run"):
        DeviceProfile("x", "AVX512_CORE_VNNI").validate(AVX2_HOST)
    with pytest.raises(DeviceProfileError, match="unknown isa 'AVX3'.*AVX512_CORE_VNNI"):
        DeviceProfile("x", "AVX3").validate(AVX2_HOST)
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
    assert host_max_isa() in ISA_FLAGS and not missing_flags(host_max_isa())
    icelake = load_profile("icelake_vnni", check_host=False)
    if "avx512_vnni" in host_cpu_flags():
        load_profile("icelake_vnni")
    else:
        with pytest.raises(DeviceProfileError, match="lacks"):
            icelake.validate()


def test_two_cpus_of_one_marketing_name_are_told_apart():
    zen2 = "processor\t: 0\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\nstepping\t: 0\nflags\t\t: avx2\n"
    zen4 = zen2.replace(": 23", ": 25").replace(": 49", ": 17").replace("avx2", "avx2 avx512f avx512_vnni")
    (model2, flags2), (model4, flags4) = parse_cpuinfo(zen2), parse_cpuinfo(zen4)
    assert model2 == "AMD EPYC (family 23, model 49, stepping 0)" and model4 != model2
    assert "avx512_vnni" in flags4 and "avx512_vnni" not in flags2
    assert parse_cpuinfo("model name : Some CPU\n")[0] == "Some CPU"  # no CPUID fields (not x86)


def test_kernels_above_a_cap_are_named():
    kernels = {"Convolution:jit_avx2_I8": 3, "Reduce:jit_avx512_I8": 1, "Reorder:jit_uni_I8": 2,
               "FullyConnected:jit_gemm_I8": 1, "FakeQuantize:jit_avx512_f32": 1, "Convolution:brgconv_avx512_amx_I8": 1}
    assert kernels_above(kernels, "AVX2") == ["Reduce:jit_avx512_I8", "FakeQuantize:jit_avx512_f32",
                                              "Convolution:brgconv_avx512_amx_I8"]
    assert kernels_above(kernels, "AVX512_CORE_VNNI") == ["Convolution:brgconv_avx512_amx_I8"]
    assert kernels_above(kernels, "AVX512_CORE_AMX") == []
    assert kernels_above(["jit_avx2_I8", "jit_sse42_I8", "jit_uni_I8", "unknown_f32", "Subgraph:jit_avx2_f32"],
                         "SSE41") == ["jit_avx2_I8", "Subgraph:jit_avx2_f32"]


def _listing_rows(text: str) -> dict[str, dict[str, str]]:
    """The profile table of ``rlnas-profiles`` output, by profile name."""
    from rlnas.oracles.profiles_app import HEADERS

    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == HEADERS
    rows = [dict(zip(HEADERS, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    by_name = {r["profile"]: r for r in rows}
    assert len(by_name) == len(rows), "a profile is listed twice"
    return by_name


def test_listing_shows_every_profile_and_what_this_host_can_run():
    script = Path(sys.executable).with_name("rlnas-profiles")
    assert script.is_file(), "console script missing: run `.venv/bin/pip install -e . --no-deps`"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert host_cpu_model() in out.splitlines()[0]
    assert f"native oneDNN ISA: {host_max_isa()}" in out
    rows = _listing_rows(out)
    assert set(rows) == set(list_profiles())
    flags = host_cpu_flags()
    for name, row in rows.items():
        profile = load_profile(name, check_host=False)
        lacking = [f for f in ISA_FLAGS[profile.isa] if f not in flags] if profile.isa else []
        # runs here exactly when the host has every flag of the cap (all shipped profiles are f32)
        assert row["runs here"] == ("no" if lacking else "yes"), row
        assert row["missing flags"] == (" ".join(lacking) or "-"), row
        assert set(LADDER[name][1]) - flags <= set(lacking)
        assert row["ISA cap"].startswith(profile.isa or "none") and row["precision"] == "f32"
        assert row["threads"] == "2"
        for cpu in profile.cpus:
            assert cpu in row["stands for (CPUs)"]
    runnable = [n for n, r in rows.items() if r["runs here"] == "yes"]
    assert sorted(runnable) == runnable_profiles() and "host" in runnable
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "profile" in helped.stdout and "flags" in helped.stdout


def test_refusing_a_profile_names_its_missing_flags_and_the_runnable_ones():
    lacking = [s for s in profile_statuses() if s.missing]
    if not lacking:
        pytest.skip(f"this host ({host_cpu_model()}) has every flag of every profile: nothing to refuse")
    runnable = runnable_profiles()
    for status in lacking:
        with pytest.raises(DeviceProfileError) as err:
            load_profile(status.profile.name)
        message = str(err.value)
        assert "\n" not in message
        assert status.profile.name in message and status.profile.isa in message
        for flag in status.missing:
            assert flag in message
        assert str(runnable) in message


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


# ----------------------------------------------------------------------------- real OpenVINO

# Which ISA each oneDNN cap lets the kernels use, in the names OpenVINO gives primitive types:
# jit_sse42_*, jit_avx_*, jit_avx2_* / brgconv_avx2_*, jit_avx512_* / brgconv_avx512_*,
# brgconv_avx512_amx_* (OpenVINO's impl_type_to_string; it calls oneDNN's SSE4.1 kernels "sse42"
# and folds VNNI into avx2/avx512, so VNNI is checked on oneDNN's own report below).
# oneDNN's "isa:" line under ONEDNN_VERBOSE (get_isa_info; stable across oneDNN 2.x-3.x for these).
# SSE41 and AVX2 were seen on this AVX2 host; the others come from oneDNN's source, unverified here.
ONEDNN_ISA_INFO = {
    "SSE41": "Intel SSE4.1",
    "AVX": "Intel AVX",
    "AVX2": "Intel AVX2",
    "AVX2_VNNI": "Intel AVX2 with Intel DL Boost",
    "AVX512_CORE": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
    "AVX512_CORE_VNNI": "Intel AVX-512 with Intel DL Boost",
    "AVX512_CORE_BF16": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
}
#: oneDNN 3.x spells some levels the AVX10 way in implementation names.
ONEDNN_ALIASES = {"AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
                  "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16"}


#: Log primitive creation only: ONEDNN_VERBOSE=1 (execution profiling too) makes the SSE41 f32
#: convolution fail to execute with 2 threads ("could not execute a primitive"), seen on this host.
ONEDNN_VERBOSE = "profile_create"


def _onednn_report(log: Path) -> tuple[str | None, list[str]]:
    """oneDNN's effective ISA line and the ISA of every created convolution, from ONEDNN_VERBOSE."""
    info, conv_isas = None, []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("onednn_verbose"):
            continue
        fields = line.split(",")
        if "info" in fields and ",isa:" in line:  # the ISA's name may hold commas itself
            info = line.partition(",isa:")[2]
        elif any(f.startswith("create") for f in fields) and "convolution" in fields:
            impl = fields[fields.index("convolution") + 1]  # e.g. jit_uni_int8:avx2, brg_conv_fwd:avx2_vnni
            conv_isas.append(impl.rpartition(":")[2].upper())
    return info, conv_isas


@pytest.fixture(scope="module")
def int8_conv_ir(tmp_path_factory) -> Path:
    """A tiny INT8 CNN as NNCF would leave it (FakeQuantize on activations and weights).

    The stem convolution stays f32 so that the first FakeQuantize fuses into it: a standalone
    FakeQuantize (NNCF's model-input quantizer) is labelled ``jit_avx2_f32`` by OpenVINO 2026.4
    even under an SSE41 cap (seen on this AVX2 host), while every oneDNN primitive honours the cap.
    """
    import openvino as ov
    from openvino import opset13 as ops

    def fq(x, low, high, levels):
        lo, hi = (ops.constant(np.full((1, 1, 1, 1), v, np.float32)) for v in (low, high))
        return ops.fake_quantize(x, lo, hi, lo, hi, levels)

    rng = np.random.default_rng(0)

    def conv(x, cin, cout, int8):
        w = ops.constant(rng.uniform(-1, 1, (cout, cin, 3, 3)).astype(np.float32))
        return ops.relu(ops.convolution(x, fq(w, -1.0, 1.0, 255) if int8 else w, [1, 1], [1, 1], [1, 1], [1, 1]))

    x = ops.parameter([1, 3, 16, 16], np.float32, name="x")
    h = fq(conv(x, 3, 16, int8=False), 0.0, 6.0, 256)
    h = fq(conv(h, 16, 16, int8=True), 0.0, 6.0, 256)
    h = conv(h, 16, 16, int8=True)
    path = tmp_path_factory.mktemp("int8_conv") / "int8_conv.xml"
    ov.save_model(ov.Model([h], [x]), str(path), compress_to_fp16=False)
    return path


@pytest.mark.parametrize("name", list_profiles())
def test_capped_worker_runs_the_capped_kernels(name, int8_conv_ir, tmp_path):
    from rlnas.oracles.ratios import TimingConfig
    from rlnas.oracles.worker_client import WorkerClient

    profile = load_profile(name, check_host=False)
    lacking = profile.missing_flags()
    if lacking:
        pytest.skip(f"this host ({host_cpu_model()}) lacks {lacking} needed by {profile.isa}")
    profile.validate()
    isa = profile.effective_isa()
    log = tmp_path / "worker.log"
    # the profile's own worker (its ISA cap in the environment), plus oneDNN's verbose report
    client = WorkerClient({**profile.env(), "ONEDNN_VERBOSE": ONEDNN_VERBOSE}, log_path=log)
    once = TimingConfig(warmup_iters=1, block_iters=2, block_skip=0, min_rounds=1, min_iters=1,
                        min_time_s=0.0, max_time_s=10.0)
    try:
        hello = client.start()
        reply = client.request({"op": "measure", "ref": None, "timing": asdict(once),
                                "lock_path": str(tmp_path / "lock"),
                                "cand": {"path": str(int8_conv_ir), "config": profile.compile_config(),
                                         "shape": None}}, timeout_s=300)
    finally:
        client.close()  # a clean exit flushes oneDNN's verbose output into the log
    assert hello["isa_env"] == profile.isa
    assert reply["inference_precision"] == profile.inference_precision and reply["threads"] == profile.threads

    kernels = list(reply["kernels"])
    int8 = [k for k in kernels if k.lower().endswith(("_i8", "_u8")) and kernel_rank(k) is not None]
    assert int8, f"no INT8 kernel with an ISA in {kernels}"
    cap = cap_rank(isa)
    above = kernels_above(kernels, isa)
    assert not above, f"{name} (cap {isa}) ran kernels above it: {above}"
    if cap == KERNEL_ISA_RANK["amx"]:
        # unverified (no AMX host here): a tiny conv may or may not get AMX tiles; AVX-512 at least
        assert max(kernel_rank(k) for k in int8) >= KERNEL_ISA_RANK["avx512"], kernels
    else:
        # verified here for SSE41 (jit_sse42_I8) and AVX2 (jit_avx2_I8); from OpenVINO's naming otherwise
        assert max(kernel_rank(k) for k in int8) == cap, kernels

    info, conv_isas = _onednn_report(log)
    assert conv_isas, f"no oneDNN convolution in the verbose log {log}"
    for conv_isa in conv_isas:  # none above the cap (ISA_FLAGS inclusion is oneDNN's partial order)
        conv_isa = ONEDNN_ALIASES.get(conv_isa, conv_isa)
        if conv_isa in ISA_FLAGS:
            assert set(ISA_FLAGS[conv_isa]) <= set(ISA_FLAGS[isa]), (conv_isa, isa)
    if isa in ("SSE41", "AVX2"):  # the exact implementation ISA, verified on this AVX2 host
        assert set(conv_isas) == {isa}, conv_isas
    if isa in ONEDNN_ISA_INFO:
        assert info == ONEDNN_ISA_INFO[isa], info
    elif "AMX" in isa:
        assert info is not None and "AMX" in info, info
