"""Inputs: reading folders, shards, Parquet and lists (`inputs`), and decoding, filtering and
re-encoding each image (`images`).
"""
