"""scorebank.analysis."""
