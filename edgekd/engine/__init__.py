"""TensorRT engines: a thin compatibility layer over TensorRT 10.x/11.x and TensorRT-RTX, and the builder."""
