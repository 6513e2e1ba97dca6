"""Few-shot segmentation from VoCo weights: class tables, model folders, fine-tuning, inference, evaluation."""
