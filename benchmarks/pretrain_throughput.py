"""Pretraining step throughput against the compute floor, measured in the same run.

Rows per model size (64³ crops, TPAMI layout: 1 volume × (2 random + 9 base) crops by default):
- ``floor``: the plain floor: a bare fwd+bwd+AdamW step of the same encoder+heads with MONAI's own window
  attention, on random tensors of the same shape (the C library's default allocator, no checkpointing); fp32 on
  a CPU, as a plain MONAI user trains there, and AMP on CUDA (so the GPU ratio isolates the input pipeline).
- ``floor+sdpa``: the same bare step with the SDPA window attention (``voco_backend.attention``), which every
  ``pretrain`` row uses (it is ``pretrain``'s network).
- ``pretrain``: the real ``pretrain`` step: batch cut from the preprocessing cache of real CT (prefetched),
  full VoCo loss, optimiser step, EMA teacher, PyTorch's default layout (as ``pretrain`` holds the network),
  ``pretrain``'s precision (``--amp``: bf16 autocast on CUDA and on a CPU with bf16 instructions); default
  allocator.
- ``pretrain+ckpt``: with gradient checkpointing.
- ``pretrain+hugepages``, ``pretrain+ckpt+hugepages``: with ``--cpu-allocator hugepages`` (``pretrain``'s
  default: transparent huge pages for large tensors, so a step faults 512× fewer pages).
- ``pretrain+hugepages+channels-last``: ``pretrain``'s defaults with channels-last convolution weights on a CPU
  (fine-tuning's layout there) — what the layout does to the whole pretraining step (nothing measurable at B,
  slower at tiny: why ``pretrain`` keeps the default layout).
- ``pretrain+hugepages+fp32``: ``pretrain``'s defaults in fp32 (``--no-amp``): what bf16 autocast gives.
- ``floor+hugepages``: the floor with huge pages — what the allocator alone gives the bare model.
- ``pretrain+retain`` (on request): ``--cpu-allocator retain`` (glibc keeps freed memory mapped; about twice
  the peak memory, out of memory at B on 24 GB).
Each row runs in its own process (allocator settings and peak RSS stay separate); the first step of each is
a warm-up and not timed. Ratios are against ``floor`` of the same size.

    .venv/bin/python benchmarks/pretrain_throughput.py --sizes tiny B --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from child_rows import run_row

PLAIN = {"cpu_allocator": "default"}
MONAI_ATTENTION = "monai_attention"  # a benchmark option, not a config field: the floor's plain attention
CHANNELS_LAST = "channels_last"  # a benchmark option: channels-last convolution weights (fine-tuning's CPU layout)
VARIANTS = {
    "floor": {**PLAIN, MONAI_ATTENTION: True},
    "floor+sdpa": PLAIN,
    "pretrain": PLAIN,
    "pretrain+ckpt": {**PLAIN, "gradient_checkpointing": True},
    "pretrain+hugepages": {"cpu_allocator": "hugepages"},
    "pretrain+hugepages+channels-last": {"cpu_allocator": "hugepages", CHANNELS_LAST: True},
    "pretrain+ckpt+hugepages": {"cpu_allocator": "hugepages", "gradient_checkpointing": True},
    "pretrain+retain": {"cpu_allocator": "retain"},
    "floor+hugepages": {"cpu_allocator": "hugepages"},
    "pretrain+hugepages+fp32": {"cpu_allocator": "hugepages", "amp": False},
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "pretrain+retain"]
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def child(variant: str, size: str, steps: int, data: list[str], cache: str, device: str) -> dict:
    """Time ``steps`` steps after one warm-up step; returns seconds per step and peak RSS."""
    from voco_backend.cpu_memory import use_cpu_allocator

    options = dict(VARIANTS[variant])
    if variant.startswith("floor") and device == "cpu":
        options["amp"] = False  # the plain floor on a CPU is fp32
    monai_attention = options.pop(MONAI_ATTENTION, False)
    channels_last = options.pop(CHANNELS_LAST, False)
    if device == "cpu":  # before the first large tensor of this process
        assert use_cpu_allocator(options["cpu_allocator"]), f"{options['cpu_allocator']} unavailable here"
    import torch
    from monai.optimizers import WarmupCosineSchedule

    from voco_backend.cancel import CancelToken
    from voco_backend.data.sources import resolve_sources
    from voco_backend.networks import use_channels_last
    from voco_backend.pretrain.config import PretrainConfig
    from voco_backend.pretrain.dataset import CachedVolumes, CropBatcher, prefetch
    from voco_backend.pretrain.heads import VoCoModel
    from voco_backend.pretrain.loop import _autocast, recipe_of, train_step
    from voco_backend.protocol import Reporter

    config = PretrainConfig(
        data=data, out="unused", model_size=size, steps=steps + 1, volumes_per_step=1, device=device, **options
    )
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    grid = config.crop_grid()
    torch.manual_seed(0)
    model = VoCoModel(size, config.head_hidden, config.teacher, config.dropout, config.gradient_checkpointing).to(dev)
    if channels_last:
        use_channels_last(model, dev)
    if monai_attention:
        from monai.networks.nets.swin_unetr import WindowAttention

        from voco_backend.attention import SDPAWindowAttention

        for module in model.modules():  # same parameters: only the attention's code changes
            if type(module) is SDPAWindowAttention:
                module.__class__ = WindowAttention
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, amsgrad=True, weight_decay=0.01
    )
    crops = config.volumes_per_step * (config.random_crops + grid.num_bases)
    autocast, fp16 = _autocast(config, dev)
    times = []
    if variant.startswith("floor"):
        x = torch.rand(crops, 1, grid.crop, grid.crop, grid.depth, device=dev)
        for _ in range(steps + 1):
            began = time.perf_counter()
            with autocast:
                student, _ = model(x)
            optimizer.zero_grad(set_to_none=True)
            student.float().square().mean().backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
    else:
        volumes = CachedVolumes(resolve_sources(data), recipe_of(config), Path(cache))
        valid = sorted(
            set(range(len(volumes))) - set(volumes.prepare(range(len(volumes)), Reporter(enabled=False), CancelToken()))
        )
        batcher = CropBatcher(volumes, valid, grid, config.random_crops, 1, config.region_mode, 0)
        scheduler = WarmupCosineSchedule(optimizer, warmup_steps=0, t_total=steps + 1)
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        model.train()
        began = time.perf_counter()
        for batch in prefetch(batcher, 0, steps + 1):
            train_step(model, model, batch, optimizer, scheduler, scaler, autocast, config)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - began)
            began = now  # includes any wait for data
    timed = times[1:]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    gpu_gb = torch.cuda.max_memory_allocated() / 1024**3 if dev.type == "cuda" else None
    return {"step_s": sum(timed) / len(timed), "crops": crops, "peak_rss_gb": peak_gb, "gpu_peak_gb": gpu_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "B"])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row (after one warm-up step)")
    parser.add_argument(
        "--data",
        nargs="+",
        default=[
            str(DEFAULT_DATA / "ibsi_sts" / "STS_002_CT_image.nii.gz"),
            str(DEFAULT_DATA / "slicerio" / "CTChest4.nrrd"),
        ],
    )
    parser.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "voco_bench_cache"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.data, args.cache, args.device)))
        return
    rows = []
    for size in args.sizes:
        for variant in args.variants:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                size,
                "--steps",
                str(args.steps),
                "--cache",
                args.cache,
                "--device",
                args.device,
                "--data",
                *args.data,
            ]
            rows.append(run_row(cmd, size, variant))
    print(f"\nPretraining step on {args.device} ({os.cpu_count()} cores), 64³ crops, {args.steps} timed steps/row\n")
    print(
        "| size | variant | crops/step | s/step | crops/s | ratio vs floor | peak RSS GB | RSS vs floor | GPU peak GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        floor = next(r for r in rows if r["size"] == row["size"] and r["variant"] == "floor")
        if "failed" in row or "failed" in floor:
            print(f"| {row['size']} | {row['variant']} | – | failed (exit {row.get('failed')}) | – | – | – | – | – |")
            continue
        gpu = "–" if row["gpu_peak_gb"] is None else f"{row['gpu_peak_gb']:.2f}"
        print(
            f"| {row['size']} | {row['variant']} | {row['crops']} | {row['step_s']:.2f} | "
            f"{row['crops'] / row['step_s']:.3f} | {row['step_s'] / floor['step_s']:.2f} | "
            f"{row['peak_rss_gb']:.2f} | {row['peak_rss_gb'] / floor['peak_rss_gb']:.2f} | {gpu} |"
        )


if __name__ == "__main__":
    main()
