"""keyplane.control."""
