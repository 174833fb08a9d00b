"""Geographic outputs: pixel areas from the CRS, kelp-bed polygons, area time series."""
