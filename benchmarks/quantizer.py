"""Forward+backward time of a residual VQ per gradient estimator (CPU by default).

    python benchmarks/quantizer.py                      # 12 stages, K=1024, D=128, 50k frames
    python benchmarks/quantizer.py --frames 5000 --repeats 3   # quick

Codebooks are initialised once (k-means on a first batch) and shared by every estimator, so each timed step
does the same lookups, EMA updates and statistics; only the gradient estimator differs. Steps of the
estimators are interleaved; the median and the fastest step are reported (the fastest is the least disturbed by
other load on the machine). Target: rotation ≤ 1.15 × the STE step.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from rvqcodec.quantize import ResidualVQ

ESTIMATORS = ("ste", "rotation", "rotation_noscale", "rotation_clamped")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=12)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--frames", type=int, default=50_000, help="frames per step (B*T)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per estimator")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    batch, t = 10, args.frames // 10
    base = ResidualVQ(args.dim, args.stages, args.codebook_size, estimator="ste").to(device)
    # initialise every stage once on a smaller batch (k-means), shared by all estimators
    base(torch.randn(1, args.dim, min(args.frames, 8 * args.codebook_size), device=device))
    models = {}
    for name in ESTIMATORS:
        m = copy.deepcopy(base)
        for layer in m.layers:
            layer.estimator = name
        models[name] = m
    z = torch.randn(batch, args.dim, t, device=device)
    times: dict[str, list[float]] = {name: [] for name in ESTIMATORS}

    def step(model):
        x = z.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(x)
        (out.quantized.square().mean() + out.commit_loss).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in ESTIMATORS:  # warm-up
        step(models[name])
    for _ in range(args.repeats):
        for name in ESTIMATORS:
            times[name].append(step(models[name]))
    medians = {name: statistics.median(v) for name, v in times.items()}
    fastest = {name: min(v) for name, v in times.items()}
    print(f"ResidualVQ: {args.stages} stages, K={args.codebook_size}, D={args.dim}, {batch * t} frames, "
          f"device={device}, threads={torch.get_num_threads()}, {args.repeats} interleaved steps per estimator")
    print("| estimator | median step (s) | ratio to STE | fastest step (s) | ratio to STE |")
    print("|---|---:|---:|---:|---:|")
    for name in ESTIMATORS:
        print(f"| {name} | {medians[name]:.3f} | {medians[name] / medians['ste']:.3f} | "
              f"{fastest[name]:.3f} | {fastest[name] / fastest['ste']:.3f} |")
    return medians


if __name__ == "__main__":
    main()
