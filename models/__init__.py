"""Model specs shipped with bayes_scaling (``*.toml``); see ``bayes_scaling.spec``."""
