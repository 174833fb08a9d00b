"""Training: augmentation, model factory, losses, optimizers and schedulers, sample figures,
the LightningModule and trainer assembly."""
