"""Deployment descriptions for other people's servers: Triton model repositories and DeepStream nvinfer configs."""
