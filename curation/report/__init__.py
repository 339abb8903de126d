"""`RUN/report.html`: what the run did, gathered from the run directory (`data`, `scan`), rendered
as one self-contained page (`page`) and written (`write`).
"""
