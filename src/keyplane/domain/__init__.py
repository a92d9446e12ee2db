"""keyplane.domain."""
