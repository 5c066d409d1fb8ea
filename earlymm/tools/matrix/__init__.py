"""The boot matrix: a grid of machines, run locally or on Dask, outcomes grouped by failure reason."""
