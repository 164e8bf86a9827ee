"""Test doubles that need no GPU: a fake SGLang HTTP server and a fake in-process ``sglang`` module, both
backed by a real tiny HF model so log-probs and weight updates are real numbers."""
