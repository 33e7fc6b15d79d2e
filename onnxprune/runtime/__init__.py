"""onnxruntime sessions: providers, inputs, runs and timing."""
