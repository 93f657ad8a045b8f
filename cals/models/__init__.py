"""Model definitions (each model with its configuration)."""
