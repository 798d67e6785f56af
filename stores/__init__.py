"""scorebank.stores."""
