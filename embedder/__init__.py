"""Embedding models and batched inference (DESIGN §3).

- `embedder.models.load_model(spec)`: one loader for the packaged default, timm names with local
  weights, ViT-H built here, TorchScript files and our trainer's backbone exports, and model
  files the user brings with their own preprocessing (`embedder.model_files`);
- `embedder.inference.embed_bytes / embed_table`: encoded images -> unit-norm float16 embeddings;
- `embedder.store`: embeddings <-> Parquet as (ids, matrix); `embedder.shards`: the resumable
  per-shard stage.
"""
