"""Training: augmentation, model factory, losses, the LightningModule and trainer assembly."""
