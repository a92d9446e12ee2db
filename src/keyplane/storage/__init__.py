"""keyplane.storage."""
