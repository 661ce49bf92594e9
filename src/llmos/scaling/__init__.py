"""Scaling laws: sweeps of pretraining runs, fits of loss against N and D, predictions."""
