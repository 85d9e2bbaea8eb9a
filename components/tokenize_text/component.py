"""Text tokenization: `beit3 tokenize text` (train or import the SentencePiece model, tokenize every split)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_text(
    validated_uri: str,
    text_tokens: Output[Dataset],
    metrics: Output[Metrics],
    vocab_size: int = 64000,
    max_len: int = 64,
    import_model: str = "",
    workers: int = 2,
    extra_args: list = [],  # noqa: B006 - a KFP parameter default, never mutated
) -> NamedTuple("Outputs", text_tokens_uri=str):
    """Writes `tokenizer/` (the SentencePiece model) and a summary (the pretraining loader tokenizes the texts).
    The validated data arrive as a URI and are streamed from S3 (no launcher download); `text_tokens_uri` is
    where the output is."""
    from collections import namedtuple

    from beit3core import io
    from beit3core.tokenizers import cli
    from beit3ops import kfp_io

    out = kfp_io.output_target(text_tokens)
    argv = ["text", "--data", validated_uri, "--out", out, "--vocab-size", vocab_size, "--max-len", max_len,
            "--workers", workers]
    if import_model:
        argv += ["--import-model", import_model]
    kfp_io.run_stage(cli.main, argv + list(extra_args))
    kfp_io.log_metrics_file(metrics, io.join(out, "summary.json"), required=False)
    text_tokens.metadata.update({"vocab_size": vocab_size, "max_len": max_len, "import_model": import_model})
    return namedtuple("Outputs", ["text_tokens_uri"])(out)
