"""Input features: spectral indices and normalization, computed on the device per batch."""
