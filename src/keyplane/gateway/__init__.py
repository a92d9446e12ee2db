"""keyplane.gateway."""
