"""Inference backends; each module imports its runtime lazily so a missing one is a clear error, not an ImportError."""
