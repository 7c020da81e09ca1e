"""The embedded default: scikit-learn's handwritten digits, a digit classifier
used as feature extractor for proxy metrics, a tiny VQVAE + VAR trained on them,
and a demo that quantizes the tiny VAR with the project's presets.

See ``docs/digits.md``.
"""
