"""Inference: prediction of masks and probabilities, and evaluation against truth masks."""
