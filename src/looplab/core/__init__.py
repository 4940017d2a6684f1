"""The core: the schema and its checks, data, model, update, the loop, the device, errors.
It imports neither Hydra nor MLflow (an import-linter contract in pyproject.toml says so)."""
