"""Backbones: the only place where model families differ (encode, velocity, decode)."""
