"""Attacks and leakage measures, each usable against any run directory or model."""
