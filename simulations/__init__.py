"""Ready-made simulation configs, shipped as package data."""
