"""Quality against ground truth: the demo world's scores (`truth`) and the real-photo copy-detection
benchmark (`copy_bench`, `copy_score`).
"""
