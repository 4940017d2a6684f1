"""looplab: run and understand the PyTorch training loop, with Hydra configs and MLflow tracking."""

__version__ = "0.1.0"
