"""keyplane.services."""
