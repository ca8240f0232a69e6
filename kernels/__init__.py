"""CUDA sources of gpu_deconv (package data; see gpu_deconv/_kernels.py)."""
