"""Experiment files shipped with scorebank (``scorebank presets``, ``scorebank run --preset NAME``)."""
