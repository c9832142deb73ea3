"""Training methods, one file each (see METHODS.md)."""
