"""The Hydra side: the schema made known to Hydra, the one owner of overrides -> config
(`overrides`), a sweep's jobs checked whole (`sweep`), their records and names (`jobs`),
the base of looplab's sweepers, and Hydra's errors worded as one line. No MLflow here."""
