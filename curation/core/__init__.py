"""The bottom floor: run-directory storage (local paths and fsspec URLs, atomic writes, memory-mapped
arrays), the errors users see, row ids, Arrow schemas, per-item error boundaries and fixed-order float
math. Everything imports it; it imports nothing of ours.
"""
