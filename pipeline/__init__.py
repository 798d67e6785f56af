"""scorebank.pipeline."""
