"""The task registry: what differs between classification and detection, in one place.

A task maps to its data builder, supernet trainer, accuracy pipeline, fine-tuning distillation
loss, ``model.pt`` metadata and the report's note on running its IR. The run setup, the training
command and the export look tasks up here (``get_task(dataset.task)``; the run's accuracy pipeline,
with its ``detection`` settings: :func:`task_pipeline`); a new task is one :func:`register_task`
call plus its modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from rlnas.data.classification import build_classification_data
from rlnas.data.detection import MEAN, STD, build_detection_data
from rlnas.detection.boxes import PostProcess
from rlnas.detection.evaluate import priors_of
from rlnas.detection.loss import MultiBoxLoss
from rlnas.detection.pipeline import DetectionOptions, DetectionPipeline
from rlnas.detection.train import DetectionSupernetTrainer, distill_loss
from rlnas.errors import ConfigError, UserError
from rlnas.oracles.accuracy import ClassificationPipeline, TaskPipeline
from rlnas.supernet.finetune import FineTuneOptions, classification_kd
from rlnas.supernet.train import SupernetTrainer

#: ``(student output, teacher output, the batch's targets) -> loss`` of one fine-tuning step
DistillLoss = Callable[[Any, Any, Any], Tensor]


class TaskError(UserError, KeyError):
    """An unknown task; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def classification_distill(student: nn.Module, options: FineTuneOptions) -> DistillLoss:
    """``kd_alpha`` x KL(teacher || student) on the logits at ``kd_temperature`` + (1 - ``kd_alpha``)
    x cross-entropy with the labels (``label_smoothing``): :func:`~rlnas.supernet.finetune.classification_kd`."""
    return classification_kd(options)


def detection_distill(student: nn.Module, options: FineTuneOptions) -> DistillLoss:
    """The detection trainer's loss of a distilled subnet (:func:`~rlnas.detection.train.detection_train_step`):
    ``kd_alpha`` x its distillation (KL on every prior's class scores at ``kd_temperature`` + smooth
    L1 on the offsets of the priors matched to the batch's ground truth) + (1 - ``kd_alpha``) x the
    MultiBox loss on that ground truth (matched once per batch)."""
    matcher = MultiBoxLoss(priors_of(student))
    alpha, temperature = options.kd_alpha, options.kd_temperature

    def loss(out: Any, taught: Any, targets: Any) -> Tensor:
        loc_t, labels = (t.to(out[0].device) for t in matcher.targets(targets))
        value = alpha * distill_loss(out, taught, labels, temperature)
        if alpha < 1:
            value = value + (1 - alpha) * matcher.from_matched(*out, loc_t, labels)["loss"]
        return value

    return loss


def classification_meta(data: Any) -> dict[str, Any]:
    """``model.pt`` entries of a classifier: input normalisation and class names."""
    return {"mean": list(data.spec.mean), "std": list(data.spec.std), "classes": list(data.classes)}


def detection_meta(data: Any) -> dict[str, Any]:
    """``model.pt`` entries of a detector: input normalisation, class names (label ``i`` is
    ``classes[i - 1]``, 0 is background) and the post-processing settings the mAP was scored with."""
    return {"mean": list(MEAN), "std": list(STD), "classes": list(data.class_names),
            "num_classes": int(data.num_classes), "postprocess": asdict(PostProcess())}


def classification_usage(model: nn.Module, resolution: int) -> str:
    """The report's note on the classifier IR's input and output."""
    return (f"IR: static input `input` [1, 3, {resolution}, {resolution}] (normalised float), output `logits`; "
            f"model_uint8.xml: input [1, {resolution}, {resolution}, 3] uint8 RGB")


def detection_usage(model: nn.Module, resolution: int) -> str:
    """The report's note on the detector IR's input, raw outputs and the Python post-processing."""
    n, classes = len(model.priors), model.num_classes + 1
    return (f"IR: static input [1, 3, {resolution}, {resolution}]; outputs loc [1, {n}, 4] (box offsets) and "
            f"conf [1, {n}, {classes}] (logits, class 0 = background) for the {n} default boxes; no decoding or "
            "NMS in the graph: `rlnas.detection.boxes.postprocess(loc, conf, load_exported('model.pt').priors)` "
            "gives the boxes")


@dataclass(frozen=True)
class Task:
    """Everything task-specific.

    :param build_data: ``(dataset config, resolution) -> data`` (train / validation images...).
    :param trainer: the :class:`~rlnas.supernet.train.SupernetTrainer` (sub)class for its supernets.
    :param pipeline: how the accuracy oracle measures it.
    :param distill: ``(student, FineTuneOptions) -> DistillLoss`` for fine-tuning from a0 (the
        finalists, the export's ``finetune_epochs``): ``kd_alpha`` x distillation + the rest the
        task's supervised loss.
    :param meta: ``data -> dict`` of preprocessing and class entries saved in ``model.pt``.
    :param usage: ``(model, resolution) -> str``: how to run the exported IR (a report note).
    """

    name: str
    build_data: Callable[[Mapping[str, Any], int], Any]
    trainer: type[SupernetTrainer]
    pipeline: TaskPipeline
    distill: Callable[[nn.Module, FineTuneOptions], DistillLoss]
    meta: Callable[[Any], dict[str, Any]]
    usage: Callable[[nn.Module, int], str]


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (a name registered twice is an error)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str | None) -> Task:
    """The registered task ``name`` (None: classification).

    :raises TaskError: naming the registered tasks.
    """
    key = name or "classification"
    if key not in TASKS:
        raise TaskError(f"unknown task {key!r}; registered tasks: {sorted(TASKS)}")
    return TASKS[key]


def task_pipeline(name: str | None, detection: DetectionOptions | None = None) -> TaskPipeline:
    """The accuracy pipeline of task ``name`` with a run's ``detection`` settings: the registered
    one, or, with heads kept in FP32, a detection pipeline keeping them (whose
    :meth:`~rlnas.oracles.accuracy.TaskPipeline.fp32_scope` the latency oracle then shares).

    :raises TaskError: an unknown task.
    :raises ConfigError: heads kept in FP32 for a task without detection heads.
    """
    task = get_task(name)
    heads = detection.fp32_heads if detection is not None else ()
    if not heads:
        return task.pipeline
    if not isinstance(task.pipeline, DetectionPipeline):
        raise ConfigError(f"detection.fp32_heads={list(heads)}: the {task.name} task has no detection heads to keep "
                          "in FP32; leave it empty (detection.fp32_heads=[])")
    return type(task.pipeline)(heads)


def build_data(dataset_cfg: Mapping[str, Any], resolution: int) -> Any:
    """The data object of a ``conf/dataset/*.yaml`` config, by its ``task``."""
    return get_task(dataset_cfg.get("task")).build_data(dataset_cfg, resolution)


register_task(Task("classification", build_classification_data, SupernetTrainer, ClassificationPipeline(),
                   classification_distill, classification_meta, classification_usage))
register_task(Task("detection", build_detection_data, DetectionSupernetTrainer, DetectionPipeline(),
                   detection_distill, detection_meta, detection_usage))
