"""The run layer: one run from a plain config (`execute`, `prepare`), what it records about
itself, and the small `Recorder` interface it records through. It knows OmegaConf, never
Hydra or MLflow; importing this package imports nothing heavy (the writer reads its tags)."""
