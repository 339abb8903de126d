"""Safety filters on decoded images: NSFW classification (`nsfw`) and face detection and blurring
(`faces`).
"""
