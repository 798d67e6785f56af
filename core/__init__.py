"""scorebank's core: the typed configuration, the error hierarchy and the registry type.

Nothing here imports anything else from scorebank, so every layer (stores, pipeline,
analysis, cli) may import it."""
