"""Accuracy oracle: BN recalibration, real INT8 evaluation in OpenVINO, caching, failures."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from rlnas.arch import Arch
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.oracles.accuracy import AccuracyOracle, dynamic_batch_top1
from rlnas.oracles.store import MeasurementStore
from rlnas.ovtools import compile_cpu, convert_to_openvino, int8_primitive_count, quantize_int8
from rlnas.supernet import load_supernet, recalibrate_bn
from rlnas.supernet.train import compose_config, train_supernet
from rlnas.tasks import TaskError, build_data, get_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A resnet_tiny supernet trained for a few seconds on a learnable 4-class 16 px ImageFolder."""
    tmp = tmp_path_factory.mktemp("oracle")
    root = write_synthetic_imagefolder(tmp / "data", {"train": 32, "val": 16}, num_classes=4, size=16)
    cfg = compose_config([
        "model=resnet_tiny", "dataset=imagefolder", f"dataset.root={root}", "dataset.augment=crop_pad",
        "dataset.store_size=16", "dataset.eval_crop=1.0", f"dataset.cache_dir={tmp / 'cache'}", "resolution=16",
        "recipe=tiny", "recipe.batch_size=16", "recipe.lr=0.1", f"output_dir={tmp / 'run'}", "threads=1",
        "log.progress=false", "log.tensorboard=false", "eval.every_epochs=0", "eval.recal_images=64",
        "recipe.phases=[{name: max, epochs: 3}, {name: all, epochs: 1, elastic: [depth, width, expand], "
        "sort_channels: true, lr_scale: 0.5}]"])
    supernet, meta = load_supernet(train_supernet(cfg))
    data = build_data(meta["dataset_config"], meta["resolution"])
    return supernet, meta, data, tmp


ORACLE_ARGS = {"recal_images": 64, "calib_images": 32, "batch_size": 24, "calib_batch_size": 8, "threads": 1}


def make_oracle(trained, store=None, **kw) -> AccuracyOracle:
    supernet, meta, data, _ = trained
    return AccuracyOracle(supernet, data, store, meta["checkpoint_id"], **{**ORACLE_ARGS, **kw})


def test_bn_recalibration_changes_stats_and_leaves_supernet_alone(trained) -> None:
    supernet, _, data, _ = trained
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    oracle = make_oracle(trained, channels_last=False)
    arch = supernet.space.min_arch()
    plain = supernet.extract(arch).eval()
    model = oracle.prepare(arch)
    assert not model.training and all(bn.momentum == 0.1 for bn in _bns(model))
    assert not torch.allclose(plain.bn1.running_mean, model.bn1.running_mean)
    # cumulative average over equal batches = the mean of bn1's input over all recalibration
    # images, augmented as in training
    with torch.no_grad():
        expected = torch.cat([plain.conv1(x) for x in data.recal_batches(64, 1, oracle.batch_size)]).mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn1.running_mean, expected, atol=1e-4)
    for key, value in supernet.state_dict().items():
        assert torch.equal(value, before[key]), f"supernet {key} changed"
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(plain, [])


def test_int8_evaluation_runs_the_quantized_model(trained) -> None:
    supernet, _, data, _ = trained
    oracle = make_oracle(trained)
    model = oracle.prepare(supernet.space.max_arch())
    acc_fp32 = oracle.fp32_accuracy(model)
    compiled = oracle.compile(oracle.quantize(model))
    assert int8_primitive_count(compiled) > 0  # INT8 kernels, e.g. jit_avx2_1x1_I8
    acc_int8 = oracle.int8_accuracy(compiled)
    assert acc_fp32 > 0.6 and abs(acc_int8 - acc_fp32) <= 0.15

    x = data.normalize(data.val_images()[0][:24])
    with torch.no_grad():
        ref = model(x).numpy()
    out = compiled.create_infer_request().infer({0: x.numpy()})[compiled.output(0)]
    assert not np.allclose(out, ref, atol=1e-5)  # quantization noise: not the FP32 graph
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9

    fp32_only = compile_cpu(convert_to_openvino(model, 16), 24, 16)
    assert int8_primitive_count(fp32_only) == 0

    with torch.no_grad():  # a deliberately broken network: classes shifted by one
        model.fc.weight.copy_(model.fc.weight.roll(1, 0))
        model.fc.bias.copy_(model.fc.bias.roll(1, 0))
    broken = compile_cpu(quantize_int8(convert_to_openvino(model, 16), oracle.calibration()), 24, 16)
    assert oracle.int8_accuracy(broken) < acc_int8 - 0.4


def test_evaluate_caches_in_the_store(trained) -> None:
    _, _, _, tmp = trained
    store = MeasurementStore(tmp / "store.sqlite")
    oracle = make_oracle(trained, store, eval_images=40)
    arch = oracle.supernet.space.sample(np.random.default_rng(3))
    first = oracle.evaluate(arch)
    assert first.ok and not first.cached, first.reason
    assert 0 <= first.acc_int8 <= 1 and 0 <= first.acc_fp32 <= 1
    assert {"recalibrate", "eval_fp32", "convert", "quantize", "compile", "eval_int8"} <= set(first.stage_seconds)
    assert first.details["eval_images"] == 40 and first.details["int8_primitives"] > 0
    # a new oracle on the same store answers from it without running the network: its supernet
    # is a copy with every weight zeroed (the same checkpoint id), which would score at chance
    supernet, meta, data, _ = trained
    zeroed = copy.deepcopy(supernet)
    with torch.no_grad():
        for param in zeroed.parameters():
            param.zero_()
    fresh = AccuracyOracle(zeroed, data, MeasurementStore(tmp / "store.sqlite"), meta["checkpoint_id"],
                           **{**ORACLE_ARGS, "eval_images": 40})
    assert fresh.cache_key(arch) == oracle.cache_key(arch)
    again = fresh.evaluate(arch)
    assert again.cached and again.ok
    assert (again.acc_fp32, again.acc_int8) == (first.acc_fp32, first.acc_int8)
    assert again.stage_seconds == first.stage_seconds and again.details == first.details  # the stored record
    other = make_oracle(trained, store, eval_images=40)
    other.checkpoint_id = "another-checkpoint"
    assert store.get("accuracy", other.cache_key(arch)) is None
    assert oracle.cache_key(arch) != make_oracle(trained, store, eval_images=40, recal_images=32).cache_key(arch)


def test_fp32_of_candidates_can_be_skipped_but_not_for_a0(trained) -> None:
    oracle = make_oracle(trained, fp32_images=0, eval_images=24)
    space = oracle.supernet.space
    assert oracle.cache_key(space.max_arch())["fp32_images"] == 24
    result = oracle.evaluate(space.min_arch())
    assert result.ok and result.acc_fp32 is None and result.acc_int8 is not None
    assert "eval_fp32" not in result.stage_seconds


def test_failures_are_results_not_crashes(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = make_oracle(trained)
    bad = oracle.evaluate(Arch("resnet_tiny", (9, 9, 9), (1.0, 1.0, 1.0), ((0.5,) * 9,) * 3))
    assert bad.status == "failed" and "depth" in bad.reason

    def explode(arch):
        raise RuntimeError("boom")

    monkeypatch.setattr(oracle.supernet, "extract", explode)
    failed = oracle.evaluate(oracle.supernet.space.min_arch())
    assert failed.status == "failed" and failed.reason.startswith("extract: RuntimeError: boom")
    monkeypatch.undo()
    # a task's pipeline comes from the task registry: an unknown task says which are registered, and
    # an oracle for another task than classification must be given its pipeline
    with pytest.raises(TaskError, match="registered tasks: \\['classification', 'detection'\\]"):
        get_task("segmentation")
    monkeypatch.setattr(oracle.supernet, "task", "detection")
    with pytest.raises(ValueError, match="pipeline=rlnas.tasks.get_task"):
        make_oracle(trained)


def _bns(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_results_roundtrip(tmp_path: Path) -> None:
    from rlnas.oracles.accuracy import AccuracyResult

    r = AccuracyResult("ok", "", 0.5, 0.49, {"eval_int8": 1.0}, details={"eval_images": 10})
    assert AccuracyResult.from_dict(r.to_dict()) == r


def test_accuracy_control_reverts_quantizers_judged_on_validation_images(trained) -> None:
    supernet, _, data, _ = trained
    oracle = make_oracle(trained)
    model = oracle.prepare(supernet.space.max_arch())
    plain = oracle.quantize(model)

    def quantizers(ov_model) -> int:
        return sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())

    # NNCF's validation function is ours: on a model it compiles, the same top-1 as the oracle's
    images, labels = data.eval_images(oracle.split, oracle.eval_count)
    batches = [(x.numpy(), labels[i:i + len(x)].numpy())
               for i, x in zip(range(0, len(images), 5), data.batches(images, 5), strict=True)]
    compiled = compile_cpu(plain, oracle.batch_size, data.resolution)
    assert dynamic_batch_top1(ov.Core().compile_model(plain, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
                              batches) == pytest.approx(oracle.int8_accuracy(compiled))
    lenient = oracle.quantize_with_accuracy_control(model, max_drop=0.99)
    assert quantizers(lenient) == quantizers(plain)  # nothing to restore
    strict = oracle.quantize_with_accuracy_control(model, max_drop=1e-6)
    assert quantizers(strict) <= quantizers(plain) and 0 <= oracle.int8_accuracy(oracle.compile(strict)) <= 1
