"""`edgekd serve`: a real NVIDIA Triton Inference Server holding edgekd artifacts (Python backend -> edgekd runtime)."""
