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

Modules: `config` (the run and its errors), `specs` (the custom resources), `watch` (submit, follow, delete;
the Kubernetes API helpers), `local` (torchrun here), `cancel` (SIGTERM handling), `cli` (`beit3 launch`
and `launch()`, which runs a config on a back-end; not imported here, so `python -m beit3ops.launch.cli` runs
it once).
"""

from beit3ops.launch.config import JobCancelled, JobFailed, JobTimeout, LaunchConfig, job_name
from beit3ops.launch.watch import current_namespace, pod_owner

__all__ = ["JobCancelled", "JobFailed", "JobTimeout", "LaunchConfig", "current_namespace", "job_name", "pod_owner"]
