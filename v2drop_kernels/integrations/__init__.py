"""Integrations of the pruning policies into other frameworks' models."""
