"""VoCo (Volume Contrast) pretraining, few-shot fine-tuning and CT segmentation backend.

The package never imports Slicer or Qt: it runs in its own process and speaks the protocol documented in
``docs/PROTOCOL.md`` (argv in, files out, JSON lines on stdout, exit codes).
"""

__version__ = "0.1.0"
