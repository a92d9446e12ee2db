"""keyplane.client."""
