"""`beit3 models`: list the registered models with their parameter counts by part (no weights allocated)."""

from __future__ import annotations

import sys

from beit3core.errors import ArgumentParser, UserError, run_main
from beit3core.factory import create_model
from beit3core.models import list_models
from beit3core.models.counting import count_parameters


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="beit3 models", description=__doc__)
    parser.add_argument("names", nargs="*", help="model names or glob patterns (default: all)")
    parser.add_argument("--layout", choices=["paper", "unilm"], help="count with this layout instead of the default")
    args = parser.parse_args(argv)

    names = sorted({n for pattern in (args.names or ["*"]) for n in list_models(pattern)})
    if not names:
        raise UserError(f"models: nothing registered matches {' '.join(args.names)}")
    overrides = {"layout": args.layout} if args.layout else {}
    cols = ["vision_ffn", "language_ffn", "vl_ffn", "attention", "embeddings", "norms", "total"]
    print(f"{'model':<28} {'layout':<6} {'L':>3} {'D':>5} {'H':>3} {'img':>4} {'patch':>5} " + " ".join(f"{c:>13}" for c in cols))
    for name in names:
        model = create_model(name, device="meta", **overrides)
        c = model.config
        counts = count_parameters(model)
        print(f"{name:<28} {c.layout:<6} {c.depth:>3} {c.embed_dim:>5} {c.num_heads:>3} {c.img_size:>4} {c.patch_size:>5} "
              + " ".join(f"{counts[k] / 1e6:>12.2f}M" for k in cols))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
