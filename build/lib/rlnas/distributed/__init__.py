"""Distributed evaluation: :mod:`rlnas.distributed.ray_backend` (``backend=ray``).

Nothing is imported here: a local run never loads Ray.
"""
