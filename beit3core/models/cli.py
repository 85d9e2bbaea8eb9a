"""`beit3 models`: list the registered models with their parameter counts by part (no weights allocated)."""

from __future__ import annotations

import argparse

from beit3core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beit3 models", description=__doc__)
    parser.add_argument("names", nargs="*", help="model names or glob patterns (default: all)")
    parser.add_argument("--layout", choices=["paper", "unilm"], help="count with this layout instead of the default")
    args = parser.parse_args(argv)

    from beit3core import count_parameters, create_model, list_models

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
    import sys

    from beit3core.errors import run_main

    sys.exit(run_main(main, sys.argv[1:]))
