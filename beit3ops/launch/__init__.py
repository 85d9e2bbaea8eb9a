"""Run a training stage (`beit3 pretrain` / `beit3 finetune`) as a distributed job.

One job description (`config.LaunchConfig`), three back-ends:

* `pytorchjob` (default on a cluster): a Training Operator v1 `PyTorchJob` (kubeflow.org/v1) with one Master
  and `replicas - 1` Workers, `nprocPerNode` processes per pod, each pod running
  `torchrun --nproc-per-node N -m beit3train.<step> <flags>`; torchrun reads the node count, rank and
  master address from the `PET_*` variables the operator injects.
* `trainjob`: a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1) on the `torch-distributed`
  runtime, with the same command.
* `local`: the same command as `torchrun --standalone` processes on this machine, so the whole pipeline runs
  without a cluster.

By default a pod runs one process per GPU. Every container requests cpu and memory (quota admission); failed
pods are restarted by the operator and the stage resumes from its own checkpoints; a retried launch adopts the
live job of the same output; a job whose pods do not start in time fails with the cluster's reasons.

Modules: `config` (the run and its errors), `specs` (the custom resources), `watch` (submit or adopt, follow,
delete; the Kubernetes API helpers; the exit handler's cleanup), `pods` (why pods do not start, the master's
log), `local` (torchrun here), `cancel` (SIGTERM handling), `cli` (`beit3 launch` and `launch()`, which runs a
config on a back-end; not imported here, so `python -m beit3ops.launch.cli` runs it once).
"""

from beit3ops.launch.config import (
    JobCancelled,
    JobFailed,
    JobNotStarted,
    JobTimeout,
    LaunchConfig,
    job_name,
)
from beit3ops.launch.watch import current_namespace, pod_owner

__all__ = ["JobCancelled", "JobFailed", "JobNotStarted", "JobTimeout", "LaunchConfig", "current_namespace", "job_name",
           "pod_owner"]
