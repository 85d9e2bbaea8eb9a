"""Visual tokenization: `beit3 tokenize visual` (train or import the VQ-KD tokenizer, tokenize every image)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_visual(
    validated_uri: str,
    visual_tokens: Output[Dataset],
    metrics: Output[Metrics],
    import_checkpoint: str = "",
    codebook_size: int = 8192,
    code_dim: int = 32,
    img_size: int = 224,
    patch_size: int = 16,
    epochs: int = 1,
    batch_size: int = 64,
    extra_args: list = [],  # noqa: B006 - a KFP parameter default, never mutated
) -> NamedTuple("Outputs", visual_tokens_uri=str):
    """Writes `tokenizer/` (VQ-KD safetensors + config.json) and `tokens/<dataset>/<shard>.npz`, one per image
    shard. The validated data arrive as a URI and are streamed from S3 (no launcher download)."""
    from collections import namedtuple

    from beit3core import io
    from beit3core.tokenizers import cli
    from beit3ops import kfp_io

    out = kfp_io.output_target(visual_tokens)
    argv = ["visual", "--data", validated_uri, "--out", out, "--codebook-size", codebook_size, "--code-dim", code_dim,
            "--img-size", img_size, "--patch-size", patch_size, "--epochs", epochs, "--batch-size", batch_size]
    if import_checkpoint:
        argv += ["--import-checkpoint", import_checkpoint]
    kfp_io.run_stage(cli.main, argv + list(extra_args))
    kfp_io.log_metrics_file(metrics, io.join(out, "summary.json"), required=False)
    visual_tokens.metadata.update({"codebook_size": codebook_size, "img_size": img_size, "patch_size": patch_size})
    return namedtuple("Outputs", ["visual_tokens_uri"])(out)
