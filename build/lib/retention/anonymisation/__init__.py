"""Anonymisation: strategies registered by name."""
