"""VoCo pretraining core: crop geometry and overlap targets, crop augmentation, projection heads, losses."""
