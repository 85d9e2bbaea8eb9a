"""The pipeline's first step: the `tasks` parameter's registration thresholds name metrics each task's
evaluation writes, checked when the run starts rather than after hours of training."""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_tasks(tasks: list):
    """Fail at once on an unknown task or a `require` threshold on a metric the task never reports."""
    from beit3ops.model_registry import check_tasks as check

    check(tasks)
    print(f"tasks: {', '.join(t['task'] for t in tasks)}: registration thresholds name known metrics")
