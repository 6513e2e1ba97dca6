"""A fine-tuning step against a plain MONAI step on the same crops, measured in the same run.

Rows per model size (crops of ``--roi``, default finetune's: 64 for tiny, 96 otherwise; ``--batch-size`` crops
of one real STS case per step, drawn by finetune's own class-balanced sampler):
- ``plain``: the baseline a MONAI user would write: ``monai.networks.nets.SwinUNETR(use_v2=True)`` with MONAI's
  own window attention and patch merging, ``DiceCELoss`` and ``AdamW``, the C library's default allocator.
- ``finetune``: ``finetune``'s own step (``FineTuner.train_step``): the SDPA window attention, the MONAI 1.3
  merge order of the official weights, channels-last convolution weights on a CPU, finetune's default
  allocator (``hugepages``) and precision (``--amp``: bf16 autocast on CUDA and on a CPU with bf16 instructions,
  else fp32).
- ``finetune+ncdhw``: the same in PyTorch's default NCDHW layout (what channels-last adds).
- ``finetune+default-alloc``: the same with the C library's allocator (what the allocator adds).
- ``finetune+monai-attention``: with MONAI's attention instead of the SDPA one (what the attention adds).
- ``finetune+ckpt``: with gradient checkpointing (``--gradient-checkpointing``).
- ``finetune+fp32``: in fp32 (``--no-amp``): what bf16 autocast gives where the CPU has bf16 instructions.
Each row runs in its own process (allocator settings and peak RSS stay separate); the first step is a warm-up
and not timed. Ratios are against ``plain`` of the same size.

    .venv/bin/python benchmarks/finetune_step.py --sizes tiny B --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from child_rows import run_row

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = {
    "plain": {"cpu_allocator": "default"},
    "finetune": {},
    "finetune+ncdhw": {"channels_last": False},
    "finetune+default-alloc": {"cpu_allocator": "default"},
    "finetune+monai-attention": {"sdpa_attention": False},
    "finetune+ckpt": {"gradient_checkpointing": True},
    "finetune+fp32": {"amp": False},
}


def child(variant: str, size: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` steps after one warm-up step; returns seconds per step and peak RSS."""
    from voco_backend.commands.finetune import FinetuneConfig
    from voco_backend.cpu_memory import use_cpu_allocator

    options = dict(VARIANTS[variant])
    config = FinetuneConfig(
        images=[args.image],
        labels=[args.label],
        out="unused",
        model_size=size,
        roi=args.roi,
        batch_size=args.batch_size,
        gradient_checkpointing=options.get("gradient_checkpointing", False),
        cpu_allocator=options.get("cpu_allocator", FinetuneConfig.cpu_allocator),
        device=args.device,
        amp=options.get("amp", True),
    )
    if args.device == "cpu":  # before the first large tensor of this process
        assert use_cpu_allocator(config.cpu_allocator), f"{config.cpu_allocator} unavailable here"
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import SwinUNETR

    from voco_backend.cancel import CancelToken
    from voco_backend.data.recipe import Recipe
    from voco_backend.networks import build_swinunetr, feature_size_of, use_channels_last
    from voco_backend.segmentation.finetune import FineTuner, Schedule
    from voco_backend.segmentation.labels import SegmentClass
    from voco_backend.segmentation.model_folder import ModelInfo
    from voco_backend.segmentation.training_data import build_cases, read_labelled, sample_batch

    device = torch.device(args.device)
    roi = (config.roi,) * 3
    classes = [SegmentClass("tumour", 1, (1.0, 0.0, 0.0))]
    cases = build_cases(
        read_labelled([args.image], [args.label], CancelToken()), classes, Recipe(min_size=roi), CancelToken()
    )
    torch.manual_seed(0)
    if variant == "plain":
        model = SwinUNETR(in_channels=1, out_channels=2, feature_size=feature_size_of(size), use_v2=True).to(device)
    else:
        model = build_swinunetr(
            size,
            2,
            gradient_checkpointing=config.gradient_checkpointing,
            sdpa_attention=options.get("sdpa_attention", True),
        ).to(device)
        if options.get("channels_last", True):
            use_channels_last(model, device)
    info = ModelInfo("bench", size, classes, Recipe(min_size=roi), roi)
    schedule = Schedule.from_config(config)
    with tempfile.TemporaryDirectory() as folder:
        tuner = FineTuner(model, info, Path(folder), schedule, device, cases, cases)
    model.train()
    if variant == "plain":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

        def step(index: int) -> None:
            image, label = sample_batch(tuner.transforms, cases, 0, index)
            image, label = image.to(device), label.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda", dtype=tuner.dtype or torch.float32):
                loss = loss_fn(model(image).float(), label)
            loss.backward()
            optimizer.step()
    else:

        def step(index: int) -> None:
            tuner.progress.step = index
            tuner.train_step()

    times = []
    for index in range(args.steps + 1):
        began = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    timed = times[1:]
    return {
        "step_s": sum(timed) / len(timed),
        "crops": args.batch_size,
        "roi": config.roi,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "B"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--roi", type=int, help="crop side (default finetune's: 64 for tiny, 96 otherwise)")
    parser.add_argument("--batch-size", type=int, default=2, help="crops per step (finetune's default)")
    parser.add_argument("--image", default=str(DEFAULT_DATA / "ibsi_sts" / "STS_002_CT_image.nii.gz"))
    parser.add_argument("--label", default=str(DEFAULT_DATA / "ibsi_sts" / "STS_002_CT_mask.nii.gz"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    rows = []
    for size in args.sizes:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--child", variant, size, "--steps", str(args.steps)]
            cmd += ["--batch-size", str(args.batch_size), "--image", args.image, "--label", args.label]
            cmd += ["--device", args.device, *(["--roi", str(args.roi)] if args.roi else [])]
            rows.append(run_row(cmd, size, variant))
    print(f"\nFine-tuning step on {args.device} ({os.cpu_count()} cores), {args.steps} timed steps/row\n")
    print("| size | variant | crops × roi | s/step | ratio vs plain | peak RSS GB | RSS vs plain | GPU peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        plain = next((r for r in rows if r["size"] == row["size"] and r["variant"] == "plain"), None)
        if "failed" in row or plain is None or "failed" in plain:
            print(f"| {row['size']} | {row['variant']} | – | failed (exit {row.get('failed')}) | – | – | – | – |")
            continue
        gpu = "–" if row["gpu_peak_gb"] is None else f"{row['gpu_peak_gb']:.2f}"
        print(
            f"| {row['size']} | {row['variant']} | {row['crops']} × {row['roi']}³ | {row['step_s']:.2f} | "
            f"{row['step_s'] / plain['step_s']:.2f} | {row['peak_rss_gb']:.2f} | "
            f"{row['peak_rss_gb'] / plain['peak_rss_gb']:.2f} | {gpu} |"
        )


if __name__ == "__main__":
    main()
