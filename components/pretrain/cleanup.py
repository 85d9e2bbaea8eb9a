"""The pipeline's exit handler: delete the run's unfinished training jobs.

When a run is terminated, KFP sets the workflow's activeDeadlineSeconds to 0 and the launcher process of the
pretrain step gets under a second after SIGTERM; the job's ownerReference to that pod only fires when Argo
deletes the pod (at the workflow's TTL). This step runs after everything else, whatever the outcome
(`dsl.ExitHandler`), and deletes the PyTorchJobs / TrainJobs labelled with the run id that have not finished.
"""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def delete_training_jobs() -> str:
    """Delete this run's unfinished training jobs (label beit3.dev/run-id = the pod's pipeline/runid label).
    Outside a cluster run (no run id) there is nothing to delete. Returns the deleted jobs, comma-separated."""
    import os

    from beit3ops.launch import current_namespace
    from beit3ops.launch.watch import delete_live_jobs, kubernetes_apis

    run_id = os.environ.get("KFP_RUN_ID", "")
    if not run_id:
        print("no run id (not a cluster run): no training jobs to delete")
        return ""
    api, _ = kubernetes_apis()
    deleted = delete_live_jobs(api, current_namespace(), run_id)
    print(f"deleted {len(deleted)} unfinished training job(s) of run {run_id}: {', '.join(deleted) or '-'}")
    return ",".join(deleted)
