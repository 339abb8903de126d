"""The embedded demo world, generated from installed packages: procedural images (`procedural`),
the world with planted copies and ground truth (`world`), the corruptions of bad input
(`corruptions`) and the fuzz corpus (`fuzz_corpus`).
"""
