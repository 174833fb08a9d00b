"""kelpseg: giant-kelp canopy segmentation in Landsat imagery."""

__version__ = "0.1.0"
