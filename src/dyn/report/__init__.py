"""Table 1 and the figures, from the metric files and the run directories."""
