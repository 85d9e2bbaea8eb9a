"""Fine-tuning tasks: one module per task and the table that maps task names to them.

Every task module has the same interface:

    NAME, SELECTION_METRIC, METRICS          # the metric the released code selects on, and all it reports
    build(backbone, header, settings)        # the task model (backbone + released heads); header = dataset.json
    targets(rows, vocab_index) -> dict       # what the collator adds to a batch for this task (labels, scores)
    collator(tokenizer, max_len, header)     # the task's batch collator (text field + targets)
    loss(model, batch, StepContext)          # scalar training loss
    predict(model, EvalContext) -> dict      # this share's outputs: {field: list}, shares joined by merge_outputs
    score(outputs, EvalContext)              # (metrics, sample predictions) of the joined outputs

    from beit3core.tasks import TASKS, settings_for
    task = TASKS["vqa"]
    model = task.build(backbone, header, settings_for("vqa"))
    loss = task.loss(model, batch, step_ctx)
    metrics, samples = task.score(task.predict(model, eval_ctx), eval_ctx)

Evaluation is split from scoring so that ranks can each predict their block of the rows (EvalContext rank /
world_size) and one scores them all: `score(merge_outputs([outputs of rank 0, rank 1, ...]), ctx)`.

Settings: `TaskSettings` and the released recipes `TASK_DEFAULTS` (settings.py).
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from beit3core.tasks import captioning, classification, nlvr2, retrieval, vqa
from beit3core.tasks.data import Collator
from beit3core.tasks.settings import (
    TASK_DEFAULTS,
    TaskSettings,
    check_task,
    settings_for,
)

TASKS: dict[str, ModuleType] = {m.NAME: m for m in (classification, vqa, nlvr2, retrieval, captioning)}
TASK_NAMES = tuple(TASKS)


def build_task_model(task: str, backbone: nn.Module, header: dict, settings: TaskSettings) -> nn.Module:
    """The task model (backbone + released heads) for a task dataset's header. `settings.head_init_scale`
    multiplies the classification and NLVR2 head weights after init (released 0.001)."""
    return TASKS[check_task(task)].build(backbone, header, settings)


def collator(task: str, tokenizer, max_len: int, header: dict) -> Collator:
    """The task's training / evaluation collator for a task dataset's header."""
    return TASKS[check_task(task)].collator(tokenizer, max_len, header)


__all__ = ["TASKS", "TASK_DEFAULTS", "TASK_NAMES", "TaskSettings", "build_task_model", "check_task", "collator",
           "settings_for"]
