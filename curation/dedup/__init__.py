"""Deduplication: perceptual hashes (`hashing`) and their Hamming search (`hamming`), embedding
whitening (`whitening`), the FAISS k-NN graph (`knn`, `knn_index`), connected components (`graph`)
and the keep/drop decisions (`decisions`).
"""
