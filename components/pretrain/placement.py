"""GPU placement of the pipeline's GPU steps from run parameters: with 0 GPUs, no GPU settings at all.

KFP sets a step's accelerator, node selector and tolerations from parameters at run time (the driver
resolves `resourceType` / `resourceCount` and `nodeSelectorJson` / `tolerationJson`), but the compiled
pipeline always carries them. This step turns the run's GPU parameters into the values the GPU steps use:
the accelerator resource, selector and tolerations as given when `gpus > 0`; an empty accelerator type (the
driver then sets no GPU limit), `{}` and `[]` when `gpus == 0`, so the CPU overlay runs every step on CPU nodes.
"""

from typing import NamedTuple

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gpu_placement(
    gpus: int,
    accelerator_type: str = "nvidia.com/gpu",
    node_selector: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    tolerations: list = [],  # noqa: B006 - a KFP parameter default, never mutated
) -> NamedTuple("Outputs", accelerator_type=str, node_selector=dict, tolerations=list):
    """(accelerator_type, node_selector, tolerations) for steps with `gpus` GPUs; all empty when gpus == 0."""
    from collections import namedtuple

    out = namedtuple("Outputs", ["accelerator_type", "node_selector", "tolerations"])
    if gpus < 0:
        raise ValueError(f"gpus {gpus}: must be >= 0")
    if gpus == 0:
        return out("", {}, [])
    return out(accelerator_type, dict(node_selector), list(tolerations))
