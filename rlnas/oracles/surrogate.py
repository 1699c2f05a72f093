"""Surrogate oracles: INT8 latency ratio and accuracy predicted from a table of real measurements.

A benchmark for comparing agents at budgets real measurements cannot pay for (the way
NAS-Bench-301 serves the field): the table holds architectures of one supernet measured on one
device profile by the real oracles (``experiments/surrogate_benchmark.py build``, a command of the
source tree: it runs searches); models fitted on it answer any architecture of the space in
milliseconds, behind the same interfaces as the real oracles, so every agent runs unchanged through
the same Evaluator (``oracle=surrogate``). Everything a run needs is here: an installed rlnas runs
``oracle=surrogate oracle.table=<table.json>`` with no checkout.

Models (``experiments/surrogate_benchmark.py fit`` cross-validates them on held-out architectures):

- ``additive`` (latency): the latency ratio is a sum over the network's layers. Layers are grouped
  by output size (a stage, for any family: only strides change it) and kind (1x1, k x k, grouped
  convolution, fully connected); each group adds ``a * MACs + b * layers`` (compute, and the fixed
  cost of a layer at 32 px), plus a constant for the rest (input, pooling, call overhead). The
  coefficients are non-negative least squares: a layer never makes a network faster.
- ``trees`` (accuracy): extremely randomised trees on the architecture's encoding and the same layer
  features; accuracy is non-additive (a narrow stage hurts more after another narrow one), the
  table is small, and trees need no feature scaling.
- ``ridge`` (either): a linear baseline on both feature sets, standardised.

``noise > 0`` adds to each prediction a residual drawn from the models' cross-validated held-out
residuals (times ``noise``), fixed per network and seed: asking twice gives the same answer, and
the benchmark is as wrong as the surrogate is, instead of flattering an agent that models it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rlnas.arch import Arch
from rlnas.data import resolve_path
from rlnas.errors import UserError
from rlnas.oracles.accuracy import AccuracyResult
from rlnas.oracles.latency_results import LatencyResult
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet

#: Table format version (``experiments/surrogate_benchmark.py build`` writes it).
TABLE_FORMAT = 1
TARGETS = ("latency_ratio", "acc_int8")
MODELS = ("additive", "ridge", "trees")
#: The context fields a run must share with the table: same supernet and network builder, images
#: and accuracy settings, device, a0 and the detector heads kept in FP32 (absent: none).
MATCHING_CONTEXT = ("model", "checkpoint_id", "dataset", "accuracy", "device", "a0", "fp32_heads")
#: Where a table comes from (the builder runs real searches, so it lives with the experiments).
BUILD_HINT = ("build one with `python experiments/surrogate_benchmark.py build` in an rlnas source checkout "
              "(see its --help) and pass oracle.table=<its table.json>")


class SurrogateError(UserError, ValueError):
    """The table is missing, malformed or from another setup; the message says which."""


@dataclass
class BenchmarkTable:
    """Real measurements of one supernet's architectures on one profile.

    :param header: the Evaluator context of the runs measured (model, checkpoint, device,
        dataset, accuracy settings), a0's reference accuracy (``reference``: acc_fp32, acc_int8 on
        validation images), a0's latency (``a0_latency_ms``), the host, and the sources.
    :param rows: one per distinct network: ``arch`` (dict), ``network`` (hash of its channel
        plan), ``latency_ratio``, ``latency_ms``, ``acc_int8``, ``macs``, ``params``, ``source``.
    """

    header: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkTable:
        """The table at ``path`` (relative: the working directory, then the source checkout)."""
        path = resolve_path(path)
        if not path.is_file():
            raise SurrogateError(f"surrogate table {path} does not exist; {BUILD_HINT}")
        data = json.loads(path.read_text())
        if data.get("format") != TABLE_FORMAT:
            raise SurrogateError(f"{path} is table format {data.get('format')!r}, this rlnas reads {TABLE_FORMAT}; "
                                 f"re{BUILD_HINT}")
        return cls(data["header"], data["rows"])

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": TABLE_FORMAT, "header": self.header, "rows": self.rows}, indent=1))
        tmp.replace(path)

    @property
    def archs(self) -> list[Arch]:
        return [Arch.from_dict(r["arch"]) for r in self.rows]

    def targets(self, name: str) -> np.ndarray:
        return np.asarray([float(r[name]) for r in self.rows])

    def supernet(self) -> Supernet:
        """The supernet family the table was measured on, untrained (its space and the layers each
        architecture builds: all the models need; no weights)."""
        model = json.loads(self.header["context"]["model"])
        return create_supernet(model["family"], **model["kwargs"])

    def check_context(self, context: dict[str, Any]) -> None:
        """SurrogateError unless ``context`` (a run's) shares the table's supernet, device and a0."""
        own = self.header.get("context", {})
        differ = [k for k in MATCHING_CONTEXT if json.dumps(own.get(k), sort_keys=True)
                  != json.dumps(context.get(k), sort_keys=True)]
        if differ:
            raise SurrogateError(f"the surrogate table was measured with another {', '.join(differ)} than this run "
                                 f"(table: {', '.join(f'{k}={own.get(k)!r}' for k in differ)}); pass the supernet "
                                 "and device it was built with, or build a table for this setup")


# -- features -----------------------------------------------------------------------------------------


def layer_features(supernet: Any, arch: Arch, resolution: int) -> dict[str, float]:
    """Per (output size, layer kind) group: millions of MACs and number of layers."""
    feats: dict[str, float] = defaultdict(float)
    for layer in supernet.layer_macs(arch, resolution):
        group = f"r{layer.out_size}/{layer.kind}"
        feats[f"{group}/mmacs"] += layer.macs / 1e6
        feats[f"{group}/layers"] += 1.0
    return dict(feats)


class Featurizer:
    """Fixed-length features of architectures: the layer groups seen at fit time, and the space's
    encoding (:meth:`~rlnas.arch.SearchSpace.to_vector`). Cached per architecture."""

    def __init__(self, supernet: Any, resolution: int) -> None:
        self.supernet = supernet
        self.resolution = int(resolution)
        self.names: list[str] = []
        self._layers: dict[Arch, dict[str, float]] = {}

    def layers(self, arch: Arch) -> dict[str, float]:
        if arch not in self._layers:
            self._layers[arch] = layer_features(self.supernet, arch, self.resolution)
        return self._layers[arch]

    def fit(self, archs: list[Arch]) -> Featurizer:
        self.names = sorted({name for arch in archs for name in self.layers(arch)})
        return self

    def additive(self, archs: list[Arch]) -> np.ndarray:
        return np.asarray([[self.layers(a).get(n, 0.0) for n in self.names] for a in archs], dtype=np.float64)

    def full(self, archs: list[Arch]) -> np.ndarray:
        encoding = np.asarray([self.supernet.space.to_vector(a) for a in archs], dtype=np.float64)
        return np.hstack([encoding, self.additive(archs)])


def make_model(name: str, seed: int = 0) -> Any:
    """An unfitted scikit-learn regressor of :data:`MODELS`."""
    if name == "additive":
        return LinearRegression(positive=True)
    if name == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    if name == "trees":
        return ExtraTreesRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=1)
    raise SurrogateError(f"unknown surrogate model {name!r}; known: {', '.join(MODELS)}")


def features_for(model: str, featurizer: Featurizer, archs: list[Arch]) -> np.ndarray:
    """The additive model sees only the layer groups (its coefficients are per-group costs)."""
    return featurizer.additive(archs) if model == "additive" else featurizer.full(archs)


@dataclass
class FitReport:
    """Held-out quality of one model on one target (k-fold cross-validation over networks)."""

    target: str
    model: str
    kendall_tau: float
    spearman: float
    mae: float
    rmse: float
    n: int
    residuals: list[float]  # held-out (measured - predicted), in table order

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "residuals"}


def cross_validate(table: BenchmarkTable, featurizer: Featurizer, target: str, model: str, folds: int = 5,
                   seed: int = 0) -> FitReport:
    """Fit on k-1 folds of the table's networks, predict the held-out fold; rank and error metrics."""
    archs, y = table.archs, table.targets(target)
    if len(archs) < 2 * folds:
        raise SurrogateError(f"the table has {len(archs)} networks; {folds}-fold cross-validation needs {2 * folds}")
    featurizer.fit(archs)
    x = features_for(model, featurizer, archs)
    predicted = np.empty_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        predicted[test] = make_model(model, seed).fit(x[train], y[train]).predict(x[test])
    residuals = y - predicted
    return FitReport(target, model, float(kendalltau(y, predicted)[0]), float(spearmanr(y, predicted)[0]),
                     float(np.mean(np.abs(residuals))), float(np.sqrt(np.mean(residuals ** 2))), len(y),
                     residuals.tolist())


# -- the surrogate and its two oracles -----------------------------------------------------------------


class Surrogate:
    """Latency-ratio and INT8-accuracy models fitted on a :class:`BenchmarkTable`.

    :param table: the measurements.
    :param supernet: the table's supernet (its space, and the layers each architecture builds).
    :param resolution: input size the table was measured at.
    :param latency_model: one of :data:`MODELS` for the latency ratio.
    :param accuracy_model: one of :data:`MODELS` for the INT8 accuracy.
    :param noise: scale of the held-out residuals added to predictions (0: the models' mean).
    :param seed: of the trees and of the noise draws.
    """

    def __init__(self, table: BenchmarkTable, supernet: Any, resolution: int, latency_model: str = "additive",
                 accuracy_model: str = "trees", noise: float = 0.0, seed: int = 0) -> None:
        if noise < 0:
            raise SurrogateError(f"noise must be >= 0, got {noise}")
        self.table, self.supernet = table, supernet
        self.featurizer = Featurizer(supernet, resolution).fit(table.archs)
        self.kinds = {"latency_ratio": latency_model, "acc_int8": accuracy_model}
        self.noise, self.seed = float(noise), int(seed)
        self.models = {t: make_model(m, seed).fit(features_for(m, self.featurizer, table.archs), table.targets(t))
                       for t, m in self.kinds.items()}
        self.residuals = {t: np.asarray(cross_validate(table, self.featurizer, t, m, seed=seed).residuals)
                          for t, m in self.kinds.items()} if noise else {}
        self._cache: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()  # features extract from the supernet, which switches its active arch

    def predict(self, arch: Arch) -> dict[str, float]:
        """``{"latency_ratio": ..., "acc_int8": ...}`` of ``arch``; the same for every architecture
        of one network (predicted once, then cached). Safe to call from several threads."""
        with self._lock:
            network = self.supernet.network_key(arch)
            if network not in self._cache:
                self._cache[network] = {t: self._predict(t, arch, network) for t in TARGETS}
            return self._cache[network]

    def _predict(self, target: str, arch: Arch, network: str) -> float:
        x = features_for(self.kinds[target], self.featurizer, [arch])
        value = float(self.models[target].predict(x)[0])
        if self.noise:
            digest = int(hashlib.sha256(f"{target}:{network}".encode()).hexdigest()[:12], 16)
            draw = np.random.default_rng([self.seed, digest]).choice(self.residuals[target])
            value += self.noise * float(draw)
        if target == "latency_ratio":
            return max(value, 1e-3)
        return float(np.clip(value, 0.0, 1.0))


class SurrogateAccuracyOracle:
    """The accuracy oracle's interface, answered by a :class:`Surrogate` (INT8 only; a0's FP32
    and INT8 accuracy are the table's measured reference)."""

    def __init__(self, surrogate: Surrogate) -> None:
        self.surrogate = surrogate
        ref = surrogate.table.header["reference"]
        self.reference = AccuracyResult(acc_fp32=ref["acc_fp32"], acc_int8=ref.get("acc_int8"),
                                        details={"surrogate": "measured reference"})

    def evaluate(self, arch: Arch) -> AccuracyResult:
        predicted = self.surrogate.predict(arch)["acc_int8"]
        # the maximal subnet carries the table's reference FP32 accuracy: a run without an a0
        # takes its target from it, as the measured oracles' baseline gives it
        fp32 = self.reference.acc_fp32 if arch == self.surrogate.supernet.space.max_arch() else None
        return AccuracyResult(acc_fp32=fp32, acc_int8=predicted, details={"surrogate": self.surrogate.kinds["acc_int8"]})

    def evaluate_model(self, model: Any, key: str) -> AccuracyResult:
        """a0's accuracy as measured when the table was built (the run's a0 is checked to be it)."""
        return self.reference


class SurrogateLatencyOracle:
    """The latency oracle's interface, answered by a :class:`Surrogate`: the ratio to a0 is
    predicted, milliseconds are the ratio times a0's measured latency."""

    def __init__(self, surrogate: Surrogate) -> None:
        self.surrogate = surrogate
        self.ref_latency_ms = float(surrogate.table.header["a0_latency_ms"])
        self.profile = surrogate.table.header["context"]["device"]

    def measure(self, model: Any, input_shape: Any, precision: str = "int8", model_key: str | None = None,
                **_: Any) -> LatencyResult:
        arch = getattr(model, "arch", None)
        if not isinstance(arch, Arch):
            raise TypeError("the surrogate predicts from the architecture: pass an object with an `arch` "
                            "(the Evaluator's NetworkBuilder), not a module")
        ratio = self.surrogate.predict(arch)["latency_ratio"]
        return LatencyResult(status="ok", latency_ms=ratio * self.ref_latency_ms, ref_latency_ms=self.ref_latency_ms,
                             ratio=ratio, ratio_method=f"surrogate:{self.surrogate.kinds['latency_ratio']}",
                             precision=precision, profile=str(self.profile.get("name", "")),
                             model_key=model_key or "", input_shape=tuple(input_shape))

    def close(self) -> None:
        """Nothing to stop (the measured oracle's worker has no counterpart here)."""


def surrogate_oracles(table: str, supernet: Any, resolution: int, context: dict[str, Any],
                      latency_model: str = "additive", accuracy_model: str = "trees", noise: float = 0.0,
                      seed: int = 0) -> tuple[SurrogateAccuracyOracle, SurrogateLatencyOracle]:
    """Both oracles of ``oracle=surrogate`` (``conf/oracle/surrogate.yaml``), after checking the
    table was measured with this run's supernet, device and a0."""
    loaded = BenchmarkTable.load(table)
    loaded.check_context(context)
    surrogate = Surrogate(loaded, supernet, resolution, latency_model, accuracy_model, noise, seed)
    return SurrogateAccuracyOracle(surrogate), SurrogateLatencyOracle(surrogate)
