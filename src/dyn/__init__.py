"""dyn: Distillation Dynamics, per-layer analysis and feature distillation of vision transformers."""
__version__ = "0.1.0"
