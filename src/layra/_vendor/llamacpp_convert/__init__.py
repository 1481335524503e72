"""llama.cpp's Hugging Face → GGUF converter, vendored (MIT; see README.md, LICENSE).

Not imported by layra itself: ``layra.gguf_convert`` runs it in a process of its own,
with this folder first on ``sys.path``, so that its ``gguf`` is the one it was written for.
"""
