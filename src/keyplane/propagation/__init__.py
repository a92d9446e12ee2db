"""keyplane.propagation."""
