"""a0 as the user's model, the distillation fine-tuning of finalists (resume after a kill), the
choice of finalists, per-network deduplication in the Evaluator, and the supernet trained from a0
with a frozen a0 teacher. Real tiny families and real CIFAR-10 images (or a generated ImageFolder)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_a0, tiny_dataset

from rlnas.arch import Arch
from rlnas.finalists import (
    Finalist,
    FinalistsConfig,
    FineTune,
    choose,
    combine_passes,
    correct_of,
    judge,
    select,
)
from rlnas.oracles.latency_results import Confirmation
from rlnas.report import write_report
from rlnas.search.evaluator import Evaluator
from rlnas.search.measurement import Measurement
from rlnas.search.reward import HardReward, SoftReward
from rlnas.spaces import create_supernet
from rlnas.stats import pack_bits
from rlnas.supernet.a0 import A0Error, build_a0, frozen_teacher, load_a0_weights
from rlnas.supernet.train import SupernetTrainer, compose_config, train_supernet
from rlnas.tasks import build_data


class Killed(Exception):
    """Stands for SIGKILL after a fine-tuning step."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """96 training and 64 validation images (real CIFAR-10 when data/cifar10 exists)."""
    return tiny_dataset(tmp_path_factory, train_limit=96, val_limit=64)


@pytest.fixture(scope="module")
def a0_file(tmp_path_factory: pytest.TempPathFactory, dataset: dict) -> Path:
    return tiny_a0(tmp_path_factory.mktemp("a0") / "a0.pt", dataset["num_classes"])


def test_a0_loads_strictly_and_names_what_does_not_fit(a0_file: Path, dataset: dict, tmp_path: Path) -> None:
    a0 = build_a0("resnet_tiny", {"num_classes": dataset["num_classes"]}, a0_file)
    state = torch.load(a0_file, weights_only=True)
    assert all(torch.equal(a0.state_dict()[k], v) for k, v in state.items()) and not a0.training
    with pytest.raises(A0Error, match="fc.weight"):  # another class count: not an a0 for this task
        build_a0("resnet_tiny", {"num_classes": dataset["num_classes"] + 1}, a0_file)
    with pytest.raises(A0Error, match="does not exist"):
        build_a0("resnet_tiny", {"num_classes": 10}, tmp_path / "missing.pt")
    with pytest.raises(A0Error, match="missing"):
        load_a0_weights(create_supernet("resnet_tiny", num_classes=10), {"conv1.weight": state["conv1.weight"]})


def _finetune(student, teacher, data, out: Path, on_step=None):
    cfg = FinalistsConfig(epochs=1.0, batch_size=16, checkpoint_every=2, lr=0.05, progress=False)
    return FineTune(copy.deepcopy(student), teacher, data, out, cfg.tuning(), "f0", seed=3, on_step=on_step).run()


def test_killed_finetune_resumes_to_the_same_weights(a0_file: Path, dataset: dict, tmp_path: Path) -> None:
    data = build_data(dataset, 32)
    supernet = create_supernet("resnet_tiny", num_classes=dataset["num_classes"])
    load_a0_weights(supernet, torch.load(a0_file, weights_only=True))
    student = supernet.extract(supernet.space.min_arch())
    teacher = frozen_teacher(build_a0("resnet_tiny", {"num_classes": dataset["num_classes"]}, a0_file))
    reference = _finetune(student, teacher, data, tmp_path / "uninterrupted").state_dict()
    assert any(not torch.equal(reference[k], v) for k, v in student.state_dict().items())  # it trained

    def kill(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _finetune(student, teacher, data, tmp_path / "killed", on_step=kill)
    resumed = _finetune(student, teacher, data, tmp_path / "killed").state_dict()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


def _m(arch: Arch, ratio: float, acc: float, status: str = "ok") -> Measurement:
    return Measurement(arch=arch, status=status, latency_ratio=ratio, acc_int8=acc)


def test_finalists_are_the_best_by_objective_within_the_margin() -> None:
    space = create_supernet("resnet_tiny", num_classes=10).space
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(5)]
    target = 0.80
    candidates = [_m(archs[0], 0.5, 0.70),  # far below: never a finalist
                  _m(archs[1], 0.6, 0.795),  # within the margin, fast
                  _m(archs[2], 0.7, 0.81),  # feasible
                  _m(archs[3], 0.9, 0.82),  # feasible, slower
                  _m(archs[4], 0.4, 0.9, status="failed")]
    chosen = select(candidates, SoftReward(), target, k=3, margin=0.01)
    assert [m.arch for m in chosen] == [archs[2], archs[1], archs[3]] or [m.arch for m in chosen] == [
        archs[1], archs[2], archs[3]]
    assert archs[0] not in {m.arch for m in chosen} and archs[4] not in {m.arch for m in chosen}
    assert len(select(candidates, SoftReward(), target, k=1, margin=0.0)) == 1
    assert select(candidates, SoftReward(), target, k=3, margin=0.0)[0].acc_int8 >= target
    fastest = select(candidates, HardReward(), target, k=2, margin=0.01, rank="latency")
    assert [m.arch for m in fastest] == [archs[1], archs[2]]  # the near-miss first: it is the fastest
    assert [m.arch for m in select(candidates, HardReward(), target, k=2, margin=0.01)] == [archs[2], archs[3]]


def test_ranked_by_latency_the_fastest_feasible_candidate_keeps_a_slot() -> None:
    space = create_supernet("resnet_tiny", num_classes=10).space
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(5)]
    target = 0.80
    near_misses = [_m(archs[i], 0.3 + 0.1 * i, 0.795) for i in range(3)]  # the three fastest, all under
    feasible = [_m(archs[3], 0.8, 0.81), _m(archs[4], 0.7, 0.805)]
    chosen = select(near_misses + feasible, HardReward(), target, k=3, margin=0.01, rank="latency")
    assert [m.arch for m in chosen] == [archs[0], archs[1], archs[4]]  # the faster feasible one, last
    assert [m.arch for m in select(near_misses + feasible, HardReward(), target, k=1, margin=0.01,
                                   rank="latency")] == [archs[4]]
    assert [m.arch for m in select(near_misses, HardReward(), target, k=2, margin=0.01, rank="latency")] == [
        archs[0], archs[1]]  # none feasible: the fastest near-misses
    mixed = near_misses[:1] + feasible  # a feasible one among the k fastest already: nothing moves
    assert [m.arch for m in select(mixed, HardReward(), target, k=2, margin=0.01, rank="latency")] == [
        archs[0], archs[4]]


class _Counting:
    """Oracles that count calls; numbers from the built network's parameter count."""

    def __init__(self) -> None:
        self.latency_calls = self.accuracy_calls = 0

    def evaluate(self, arch):
        self.accuracy_calls += 1
        return Measurement(arch=arch, acc_fp32=0.8, acc_int8=0.8)

    def measure(self, model, input_shape, precision="int8", model_key=None):
        self.latency_calls += 1
        params = sum(p.numel() for p in model().parameters())
        return Measurement(arch=None, latency_ms=params / 1e4, ref_latency_ms=1.0, latency_ratio=None)


def test_two_architectures_of_one_network_cost_one_evaluation() -> None:
    """resnet_tiny at width 0.5: expand 0.25 and 0.5 build the same channels; the second is
    answered from the first's measurement, costs no budget, and stays a valid answer."""
    supernet = create_supernet("resnet_tiny", num_classes=10)
    space = supernet.space
    top = space.max_arch()
    twins = [Arch(space.family, top.depths, (0.5,) + top.widths[1:], ((e,) * top.depths[0],) + top.expands[1:])
             for e in (0.25, 0.5)]
    assert supernet.network_key(twins[0]) == supernet.network_key(twins[1]) and twins[0] != twins[1]
    oracles = _Counting()
    evaluator = Evaluator(supernet, oracles, oracles, (1, 3, 32, 32), budget=1)
    first = evaluator.evaluate(twins[0])
    calls = (oracles.latency_calls, oracles.accuracy_calls)
    second = evaluator.evaluate(twins[1])
    assert second.arch == twins[1] and second.latency_ms == first.latency_ms and second.acc_int8 == first.acc_int8
    assert (oracles.latency_calls, oracles.accuracy_calls) == calls
    assert evaluator.unique_evaluations == 1 and evaluator.stats.duplicates == 1


def test_supernet_from_a0_starts_as_a0_and_distils_from_it(a0_file: Path, dataset: dict, tmp_path: Path) -> None:
    """recipe teacher=a0: the maximal network inherits a0 (channels sorted, same function), every
    subnet then learns from the frozen a0; without an a0 the recipe refuses to start."""
    overrides = ["model=resnet_tiny", "recipe=quick_a0", "recipe.train_images=null", "recipe.batch_size=32",
                 "threads=1", "log.progress=false", "log.tensorboard=false", "eval.every_epochs=0",
                 "eval.final_val_images=32", "eval.recal_images=32",
                 *[f"dataset.{k}={v}" for k, v in dataset.items() if not isinstance(v, list)]]
    cfg = compose_config([*overrides, f"a0.checkpoint={a0_file}", f"output_dir={tmp_path / 'sn'}"])
    trainer = SupernetTrainer(cfg)
    a0 = build_a0("resnet_tiny", trainer.model_kwargs, a0_file).eval()
    trainer.init_weights()
    trainer.supernet.sort_channels()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        top = trainer.supernet.extract(trainer.supernet.space.max_arch()).eval()
        assert torch.allclose(top(x), a0(x), atol=1e-4)
    meta = torch.load(train_supernet(cfg), weights_only=False)["meta"]
    assert meta["a0"]["sha256"] and meta["recipe"]["teacher"] == "a0" and meta["completed"]
    with pytest.raises(A0Error, match="no a0.checkpoint"):
        SupernetTrainer(compose_config([*overrides, f"output_dir={tmp_path / 'none'}"]))


def _judged(name: str, lost: int, ratio: float, a0_row: dict, finalists: int = 3) -> Finalist:
    """A finalist that gets a0's right images except ``lost`` of them (validation and held-out)."""
    arch = create_supernet("resnet_tiny", num_classes=10).space.max_arch()
    rows = {}
    for split in ("val", "holdout"):
        correct = correct_of(a0_row, split, "fp32").copy()
        correct[np.flatnonzero(correct)[:lost]] = False
        rows[split] = correct
    after = {"val_int8": float(rows["val"].mean()), "holdout_int8": float(rows["holdout"].mean()),
             "images": a0_row["images"], "bits": {f"{s}_int8": pack_bits(c) for s, c in rows.items()}}
    judge(after, a0_row, 0.99, 0.9, finalists)
    return Finalist(name, arch, {}, after=after, confirmed_ratio=ratio)


def test_the_choice_wants_the_bound_to_hold_with_confidence() -> None:
    """a0 right on 1800 of 2000 validation images (bound: 0.891): losing 4 of them (0.898) holds
    the bound with 90 % confidence over 3 finalists, losing 14 (0.893) meets it only as a point
    estimate, losing 30 (0.885) misses it."""
    a0_correct = np.zeros(2000, dtype=bool)
    a0_correct[:1800] = True
    bits = pack_bits(a0_correct)
    a0_row = {"images": {"val": 2000, "holdout": 2000},
              "bits": {"val_fp32": bits, "holdout_fp32": bits}}
    safe, close, short = (_judged(n, lost, r, a0_row) for n, lost, r in (("safe", 4, 0.3), ("close", 14, 0.25),
                                                                            ("short", 30, 0.2)))
    assert safe.after["val_bound"]["holds"] and not close.after["val_bound"]["holds"]
    assert close.after["val_int8"] >= 0.891 > short.after["val_int8"]
    assert choose([safe, close, short]) == (safe, True)  # not the fastest, nor the point-feasible faster one
    assert choose([close, short]) == (close, False)  # none established: the highest lower bound
    low, high = safe.after["holdout_int8_interval"]
    assert low < safe.after["holdout_int8"] < high and safe.after["holdout_bound"]["holds"]
    alone = _judged("alone", 14, 0.25, a0_row, finalists=1)  # one comparison: less is asked
    assert alone.after["val_bound"]["lower"] > close.after["val_bound"]["lower"]


def test_confirmation_passes_combine_to_their_median() -> None:
    def one(ratio: float, ci: list[float], rounds: int) -> Confirmation:
        return Confirmation(reference="a0", latency_ms={"a0": 2.0, "f0": 2.0 * ratio}, ratio={"a0": 1.0, "f0": ratio},
                            ratio_ci={"a0": [1.0, 1.0], "f0": ci}, rounds=rounds, profile="p")

    passes = [one(0.27, [0.26, 0.28], 400), one(0.31, [0.30, 0.32], 450), one(0.29, [0.285, 0.295], 420)]
    combined = combine_passes(passes)
    assert combined["ratio"]["f0"] == 0.29 and combined["ratio_by_pass"]["f0"] == [0.27, 0.31, 0.29]
    assert combined["ratio_ci"]["f0"] == [0.26, 0.32] and combined["rounds_by_pass"] == [400, 450, 420]
    assert combined["passes"] == 3 and len(combined["runs"]) == 3 and combined["latency_ms"]["f0"] == pytest.approx(0.58)
    with pytest.raises(ValueError, match="confirm_passes"):
        FinalistsConfig(confirm_passes=0)


def test_the_report_says_what_ran_above_the_isa_cap(tmp_path: Path) -> None:
    def confirmation(above: dict[str, list[str]]) -> Confirmation:
        return Confirmation(reference="a0", latency_ms={"a0": 2.0, "f0": 1.0}, ratio={"a0": 1.0, "f0": 0.5},
                            ratio_ci={"a0": [1.0, 1.0], "f0": [0.49, 0.51]}, rounds=10, profile="kabylake_avx2",
                            above_cap=above)

    for above, said in (({"a0": ["Reduce:jit_avx512_I8"], "f0": []}, True), ({"a0": [], "f0": []}, False)):
        combined = combine_passes([confirmation(above), confirmation(above)])
        assert combined["above_cap"] == above
        md, _ = write_report(tmp_path / str(said), {"finalists": {"confirmation": combined, "target": 0.8, "finalists": [
            {"name": "f0", "short": "d1", "search": {"latency_ratio": 0.5}, "confirmed_ratio": 0.5,
             "before": {"val_int8": 0.8, "holdout_int8": 0.8}, "after": {"val_int8": 0.81, "holdout_int8": 0.8},
             "feasible": True}]}})
        assert ("a0: Reduce:jit_avx512_I8" in md.read_text()) == said
