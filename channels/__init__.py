"""Real-time delivery: local connection hub, broker backends and presence."""
