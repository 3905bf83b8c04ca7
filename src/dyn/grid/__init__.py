"""The grid of runs: run specs (method, layer spec, beta, epochs, seed), their ids and cohorts, and layer
specs -> aligned (student, teacher) layer pairs. Shared by the workflow and training, importing neither."""
