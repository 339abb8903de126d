"""Retrieval around curated seeds: k-means (`clustering`), seedless balanced sampling (`balanced`,
`balanced_leaves`), the paper's retrieval modes (`retrieve`), the seed registry (`seeds`) and the
recipes that combine them (`recipes`).
"""
