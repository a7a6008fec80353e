"""Emotion datasets: one schema, loaders, and the embedded stimulus set."""
