"""Solvers: closed forms (FFT, DCT, multichannel), batched PCG, kernel estimation."""
