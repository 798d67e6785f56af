"""scorebank.cli."""
