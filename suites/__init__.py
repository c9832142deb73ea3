"""Evaluation suites, one module each (see PROTOCOLS.md)."""
