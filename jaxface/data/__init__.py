"""Training and evaluation data: annotation readers, augmentation, the synthetic set, the loader."""
