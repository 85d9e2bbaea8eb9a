"""Kubeflow Pipelines components: one folder per stage, each a thin lightweight-component shell over the
same `main(argv)` that the `beit3` CLI and the DVC stages call.

Component modules import only kfp (and this setting) at the top level; everything else is imported inside
the component body, which runs in the project image.
"""

# The one container image every component (and the PyTorchJob / TrainJob it launches) runs in. Build it
# from the repository's Dockerfile; a run can override it with the pipeline's `image` parameter.
IMAGE = "ghcr.io/beit3-platform/beit3:0.1.0"
