"""The curated output: Parquet / WebDataset shards and the manifest (`shards`), joined from the pool
by a streaming two-pass join (`join`).
"""
