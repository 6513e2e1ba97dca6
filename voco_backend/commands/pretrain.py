"""VoCo self-supervised pretraining of a SwinUNETR-v2 encoder on unlabeled CT.

Examples::

    python -m voco_backend pretrain --data /data/ct/ --out runs/voco_b --steps 100000 --model-size B
    torchrun --nproc-per-node 8 -m voco_backend pretrain --data list.txt --out runs/voco_b --steps 100000
    python -m voco_backend pretrain --data list.txt --out runs/voco_b --steps 200000 --resume

The run folder receives config.yaml, checkpoint_last.pt (resumable), checkpoint_step*.pt, encoder.pt (official
VoCo 145-key layout, loads into MONAI SwinUNETR(use_v2=True)), log.jsonl, tensorboard/ and loss.png.
"""

from __future__ import annotations

from voco_backend.cancel import CancelToken
from voco_backend.pretrain.config import PretrainConfig
from voco_backend.protocol import Reporter

CONFIG = PretrainConfig


def run(config: PretrainConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Train (pretrain.loop), then report the run's outputs."""
    from voco_backend.pretrain.loop import train

    reporter.result(**train(config, reporter, cancel))
