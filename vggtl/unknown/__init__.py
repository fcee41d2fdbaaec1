"""Saying "unknown" when an image is none of the classes (out-of-scope detection).

:mod:`vggtl.unknown.detector` fits the score on the training split's cached
features, calibrates its threshold on the validation split, and builds the
same score into ``model.keras`` (so predict and every export compute it in
the forward pass that classifies). docs/unknown.md has the measurements the
method was chosen by.
"""
