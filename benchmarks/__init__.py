"""Benchmarks of onnxprune (run from the repository root, e.g.
``python -m benchmarks.torch_pruning_compare``)."""
