"""Environments: prompt sources and the verifiers that score answers to them."""
