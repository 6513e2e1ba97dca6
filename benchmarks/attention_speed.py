"""Window attention in training: MONAI's explicit softmax against ``voco_backend.attention`` (SDPA), same run.

One stage-1 ``WindowAttention`` (7³ windows, 3 heads, relative-position bias, MONAI's own shifted-window mask of
the padded 35³ feature map) forward and backward per row, on the input of ``CROPS`` 64³ crops (125 windows of 343
tokens each) on the CPU, in fp32 or under bf16 autocast (``--precision``; training's default on a CPU with bf16
instructions). Each row runs in its own process so that its peak RSS is its own; the first pass is a warm-up and
not timed. Ratios are against the MONAI row of the same width and precision. ``--chunk-mib`` adds a row of ours
per size of its CPU backward chunk (``voco_backend.attention.CPU_CHUNK_BYTES``; the default row is the module's
own).

    .venv/bin/python benchmarks/attention_speed.py --dims 12 48 --crops 4 2 --precision fp32 bf16
    .venv/bin/python benchmarks/attention_speed.py --dims 12 48 --crops 4 2 --precision bf16 --chunk-mib 64 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(kind: str, dim: int, crops: int, repeats: int, precision: str, chunk_mib: float) -> dict:
    import torch
    from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

    from voco_backend import attention
    from voco_backend.attention import use_sdpa_attention

    if chunk_mib:
        attention.CPU_CHUNK_BYTES = int(chunk_mib * 2**20)

    torch.manual_seed(0)
    module = WindowAttention(dim, 3, (7, 7, 7), qkv_bias=True)
    if kind == "sdpa":
        use_sdpa_attention(module)
    windows, tokens = 125, 343
    x = torch.randn(crops * windows, tokens, dim, requires_grad=True)
    mask = compute_mask([35, 35, 35], (7, 7, 7), (3, 3, 3), torch.device("cpu"))  # a 32³ stage 1, padded
    assert mask.shape == (windows, tokens, tokens)

    def one_pass() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = module(x, mask)
        out.float().sum().backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one_pass()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    seconds = (time.perf_counter() - began) / repeats
    peak_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e6
    return {"s": seconds, "rss_added_gb": peak_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[12, 48], help="channel widths (tiny 12, B 48)")
    parser.add_argument("--crops", type=int, nargs="+", default=[4, 2], help="crops per width, in order")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="fp32, or bf16 autocast"
    )
    parser.add_argument(
        "--chunk-mib", type=float, nargs="+", default=[0], help="our backward's CPU chunk sizes (0: the default)"
    )
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, dim, crops, repeats, precision, chunk = args.child
        print(json.dumps(_child(kind, int(dim), int(crops), int(repeats), precision, float(chunk))))
        return
    print("| width | crops | precision | attention | s fwd+bwd | ratio | RSS added GB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for dim, crops in zip(args.dims, args.crops, strict=True):
        for precision in args.precision:
            rows = {}
            for kind, chunk in [("monai", 0.0)] + [("sdpa", c) for c in args.chunk_mib]:
                command = [sys.executable, __file__, "--child", kind, str(dim), str(crops), str(args.repeats)]
                out = subprocess.run([*command, precision, str(chunk)], capture_output=True, text=True, check=True)
                name = f"sdpa, chunk {chunk:g} MiB" if kind == "sdpa" and chunk else kind
                rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
            for kind, row in rows.items():
                base = rows["monai"]
                print(
                    f"| {dim} | {crops} | {precision} | {kind} | {row['s']:.2f} | {row['s'] / base['s']:.2f} | "
                    f"{row['rss_added_gb']:.2f} | {row['rss_added_gb'] / base['rss_added_gb']:.2f} |"
                )


if __name__ == "__main__":
    main()
