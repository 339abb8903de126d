"""Safety filters on decoded images: NSFW classification (`nsfw`) and face detection and blurring
(`faces`, batched MTCNN in `mtcnn`), run together by `filters.safety_filter` on pixels decoded once;
`runtime` holds the onnxruntime sessions (one per model per process, one thread, CUDA when present).
"""
