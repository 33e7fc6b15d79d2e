import logging

logging.getLogger("onnxprune").setLevel(logging.ERROR)
