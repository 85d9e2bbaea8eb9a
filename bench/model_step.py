"""One training step (forward + backward) of torchscale's BEiT3 and of beit3core, side by side.

Same config, same weights (torchscale's, converted), same inputs; the two are timed alternately in one run
(order flipped every repeat) and the median step time gives samples/s. Modes: fused (image + text),
vision-only, text-only; sizes: base (12 x 768) and 12 x 384. Also reported: the share of step time in
matrix multiplies (torch.profiler self time of mm/addmm/bmm/baddbmm, and of the fused attention kernel),
the effective GFLOP/s (analytic model FLOPs / step time) against this machine's measured fp32 GEMM rate.

Peak memory on CPU: each (implementation, size, mode) runs in a fresh subprocess with
MALLOC_MMAP_THRESHOLD_=65536, so every tensor above 64 KiB is its own mmap, returned to the OS when freed:
the resident set then follows live tensor bytes instead of the allocator's cache. The figure is the
kernel's peak RSS (VmHWM, reset through /proc/self/clear_refs after a warm-up step) during one step minus
the RSS just before it (model, inputs and the torch runtime resident): activations saved for backward,
gradients and workspaces. On CUDA it is
torch.cuda.max_memory_allocated() over the step minus the allocation before it.

    python bench/model_step.py                # full run (CPU: tens of minutes on 2 cores)
    python bench/model_step.py --quick        # 12 x 384, fused + text, batch 4, fewer repeats
    python bench/model_step.py --device cuda  # bf16 autocast for both, plus model-FLOPs utilisation

torchscale 0.3.0 + fairscale 0.4.0 are needed (`pip install --no-deps torchscale==0.3.0 fairscale==0.4.0`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from beit3train.runtime import autocast

SIZES = {"base": dict(depth=12, dim=768, heads=12), "12x384": dict(depth=12, dim=384, heads=6)}
MODES = ("fused", "vision", "text")
IMPLS = ("torchscale", "beit3core")
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
ATTN_OPS = {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12 x 384 only, fused + text, batch 4, 2 repeats")
    p.add_argument("--sizes", default="base,12x384")
    p.add_argument("--modes", default="fused,vision,text")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (alternating)")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="CUDA: dense bf16 peak for MFU (H100 SXM 989)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--_memory", nargs=3, metavar=("IMPL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.modes, args.batch, args.repeats = "12x384", "fused,text", 4, 2
    return args


# -- models and inputs ------------------------------------------------------------------------------------
class TorchscaleWrapper(nn.Module):
    """As unilm's task models: the backbone at `self.beit3`, so its keys are the released ones."""

    def __init__(self, depth, dim, heads, img_size, drop_path):
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3

        super().__init__()
        self.beit3 = BEiT3(EncoderConfig(
            multiway=True, layernorm_embedding=False, normalize_output=True, no_output_layer=True, vocab_size=64010,
            img_size=img_size, patch_size=16, encoder_embed_dim=dim, encoder_attention_heads=heads,
            encoder_ffn_embed_dim=4 * dim, encoder_layers=depth, drop_path_rate=drop_path))

    def forward(self, image, ids, pad):
        return self.beit3(textual_tokens=ids, visual_tokens=image, text_padding_position=pad)["encoder_out"]


class Beit3coreWrapper(nn.Module):
    def __init__(self, depth, dim, heads, img_size, drop_path):
        from beit3core.factory import create_model

        super().__init__()
        self.model = create_model("beit3_base_patch16_224", depth=depth, embed_dim=dim, num_heads=heads,
                                  mlp_dim=4 * dim, img_size=img_size, drop_path_rate=drop_path)

    def forward(self, image, ids, pad):
        return self.model(image=image, text_ids=ids, text_padding_mask=pad).hidden


def build(impl, size, args, source=None):
    torch.manual_seed(0)
    s = SIZES[size]
    cls = TorchscaleWrapper if impl == "torchscale" else Beit3coreWrapper
    model = cls(s["depth"], s["dim"], s["heads"], args.img_size, args.drop_path)
    if source is not None:  # same weights as the torchscale model
        from beit3core.checkpoint import convert_unilm_state_dict, fit_state_dict

        fitted, report = fit_state_dict(model.model, convert_unilm_state_dict(source.state_dict()))
        assert not report.missing and not report.unexpected, report
        model.model.load_state_dict(fitted)
    return model.to(args.device).train()


def make_inputs(mode, args):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g)
    ids = torch.randint(4, 64000, (args.batch, args.text_len), generator=g)
    pad = torch.zeros(args.batch, args.text_len, dtype=torch.bool)
    pad[::2, args.text_len * 3 // 4:] = True  # half the captions are a quarter shorter
    d = args.device
    if mode == "vision":
        return image.to(d), None, None
    if mode == "text":
        return None, ids.to(d), pad.to(d)
    return image.to(d), ids.to(d), pad.to(d)


def step(model, inputs, args):
    with autocast(torch.device(args.device)):
        out = model(*inputs)
    out.float().square().mean().backward()
    for p in model.parameters():
        p.grad = None


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(model, inputs, args) -> float:
    sync(args)
    t = time.perf_counter()
    step(model, inputs, args)
    sync(args)
    return time.perf_counter() - t


# -- FLOPs and machine rate -------------------------------------------------------------------------------
def step_flops(size, mode, args) -> float:
    """Analytic matmul FLOPs of forward + backward (3x forward): projections, FFN, attention, patch conv."""
    s = SIZES[size]
    d, f, n = s["dim"], 4 * s["dim"], (args.img_size // 16) ** 2
    tokens = {"fused": n + 1 + args.text_len, "vision": n + 1, "text": args.text_len}[mode]
    per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * 2 * tokens * tokens * d
    patch = 2 * n * 3 * 16 * 16 * d if mode != "text" else 0
    return 3.0 * args.batch * (s["depth"] * per_layer + patch)


def matmul_rate(args, n=2048, repeats=5) -> float:
    """Measured fp32 (CPU) / bf16 (CUDA) GEMM rate in GFLOP/s, square n x n, best of `repeats`."""
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(args)
        t = time.perf_counter()
        a @ b
        sync(args)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def profile_shares(model, inputs, args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        step(model, inputs, args)
    total = gemm = attn = 0.0
    for e in prof.key_averages():
        t = e.self_device_time_total if args.device.startswith("cuda") else e.self_cpu_time_total
        total += t
        gemm += t if e.key in GEMM_OPS else 0.0
        attn += t if e.key in ATTN_OPS or "flash_attention" in e.key or "efficient_attention" in e.key else 0.0
    return {"gemm_share": gemm / total, "attn_kernel_share": attn / total}


# -- memory (one subprocess per measurement on CPU) -------------------------------------------------------
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory_here(impl, size, mode, args) -> dict:
    model = build(impl, size, args)
    inputs = make_inputs(mode, args)
    step(model, inputs, args)  # warm-up: one-time kernel/thread-pool setup is not the step's memory
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, inputs, args)
        torch.cuda.synchronize()
        return {"step_peak_bytes": torch.cuda.max_memory_allocated() - before, "total_peak_bytes": torch.cuda.max_memory_allocated()}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the kernel's peak-RSS mark (VmHWM) to the current RSS
    before = _proc_status_kib("VmRSS") * 1024
    step(model, inputs, args)
    peak = _proc_status_kib("VmHWM") * 1024
    return {"step_peak_bytes": peak - before, "total_peak_bytes": peak}


def measure_memory(impl, size, mode, args, argv) -> dict:
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        return measure_memory_here(impl, size, mode, args)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_memory", impl, size, mode]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_grad_enabled(True)
    if args._memory:
        print(json.dumps(measure_memory_here(*args._memory, args)))
        return 0
    child_argv = [a for a in argv if a not in ("--quick",)]
    if args.quick:
        child_argv += ["--batch", str(args.batch)]
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    dev = args.device
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"image {args.img_size}px, text {args.text_len} tokens, drop_path {args.drop_path}, "
          f"{'bf16 autocast' if dev.startswith('cuda') else 'fp32'}")
    rate = matmul_rate(args)
    print(f"measured GEMM rate (2048^3): {rate:.1f} GFLOP/s")
    results = []
    for size in sizes:
        ref = build("torchscale", size, args)
        ours = build("beit3core", size, args, source=ref.cpu()).to(dev)
        ref = ref.to(dev)
        models = {"torchscale": ref, "beit3core": ours}
        for mode in modes:
            inputs = make_inputs(mode, args)
            with torch.no_grad():  # the two compute the same function
                ref.eval(), ours.eval()
                with autocast(torch.device(args.device)):
                    diff = (ref(*inputs).float() - ours(*inputs).float()).abs().max().item()
                ref.train(), ours.train()
            for m in models.values():  # warm-up
                step(m, inputs, args)
            times = {k: [] for k in models}
            for r in range(args.repeats):
                order = IMPLS if r % 2 == 0 else IMPLS[::-1]
                for impl in order:
                    times[impl].append(timed(models[impl], inputs, args))
            row = {"size": size, "mode": mode, "max_abs_diff": diff, "flops": step_flops(size, mode, args)}
            for impl in IMPLS:
                t = statistics.median(times[impl])
                row[impl] = {"step_s": t, "samples_per_s": args.batch / t, "gflops": row["flops"] / t / 1e9}
                if not args.no_profile:
                    row[impl].update(profile_shares(models[impl], inputs, args))
                if not args.no_memory:
                    row[impl].update(measure_memory(impl, size, mode, args, child_argv))
            results.append(row)
            report_row(row, rate, args)
        del ref, ours, models
    summary(results, rate, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_gflops": rate, "args": vars(args), "results": results}, f, indent=2)
    return 0


def report_row(row, rate, args):
    ts, ours = row["torchscale"], row["beit3core"]
    print(f"\n[{row['size']} {row['mode']}]  max |diff| eval forward {row['max_abs_diff']:.1e}")
    print(f"  {'':<11} {'step s':>8} {'samples/s':>10} {'GFLOP/s':>8} {'of GEMM':>8} {'GEMM share':>10} "
          f"{'attn kern':>9} {'step peak MiB':>13} {'process MiB':>11}")
    for name, r in (("torchscale", ts), ("beit3core", ours)):
        mem = (f"{r['step_peak_bytes'] / 2**20:>13.0f} {r['total_peak_bytes'] / 2**20:>11.0f}"
               if "step_peak_bytes" in r else f"{'-':>13} {'-':>11}")
        shares = (f"{r['gemm_share']:>10.0%} {r['attn_kernel_share']:>9.0%}" if "gemm_share" in r else f"{'-':>10} {'-':>9}")
        print(f"  {name:<11} {r['step_s']:>8.2f} {r['samples_per_s']:>10.2f} {r['gflops']:>8.1f} "
              f"{r['gflops'] / rate:>8.0%} {shares} {mem}")
        if args.device.startswith("cuda"):
            print(f"  {'':<11} MFU {r['gflops'] / 1e3 / args.peak_tflops:.1%} of {args.peak_tflops:.0f} TFLOP/s")
    line = f"  ratio beit3core/torchscale: samples/s {ours['samples_per_s'] / ts['samples_per_s']:.2f}x"
    if "step_peak_bytes" in ours:
        line += (f", step peak memory {ours['step_peak_bytes'] / ts['step_peak_bytes']:.2f}x"
                 f", process peak {ours['total_peak_bytes'] / ts['total_peak_bytes']:.2f}x")
    print(line, flush=True)


def summary(results, rate, args):
    print("\nsummary (beit3core / torchscale)")
    print(f"  {'size':<7} {'mode':<7} {'speed':>6} {'memory':>7}   target fused: speed >= 1.10x, memory <= 0.85x")
    for row in results:
        ts, ours = row["torchscale"], row["beit3core"]
        mem = f"{ours['step_peak_bytes'] / ts['step_peak_bytes']:>6.2f}x" if "step_peak_bytes" in ours else f"{'-':>7}"
        print(f"  {row['size']:<7} {row['mode']:<7} {ours['samples_per_s'] / ts['samples_per_s']:>5.2f}x {mem}")


if __name__ == "__main__":
    sys.exit(main())
