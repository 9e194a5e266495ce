"""Test and demo helpers that run real processes (no mocks): ``raydal.testing.cluster``."""
