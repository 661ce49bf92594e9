"""llmos: a complete, hackable large-language-model system."""

__version__ = "0.1.0"
