"""What the Snakefile imports (config checks, the run grid and run ids, layer specs), GPU slots and
atomic writes. Nothing here imports torch or timm at import time: Snakemake starts fast."""
