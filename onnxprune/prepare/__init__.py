"""Preparation: normalise a loaded model (names, constants, shapes) before analysis."""
