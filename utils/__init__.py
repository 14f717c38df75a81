"""Shared, non-algorithmic helpers: OGBench data, evaluation, checkpoints, logging.

Nothing in here implements a learning method; each algorithm lives whole in its own file.
"""
