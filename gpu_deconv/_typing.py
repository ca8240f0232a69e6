"""Type aliases of the public API (used in annotations only).

CuPy is optional, so an array is spelled ``Array`` (``numpy.ndarray`` or
``cupy.ndarray``; the result is in the module of the input) rather than a
union that would need CuPy installed to type-check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

from numpy.typing import DTypeLike

__all__ = ["Array", "ArrayLike", "Boundary", "Convention", "DTypeLike", "Method", "Mode", "PerImage", "Reg",
           "MODES", "BOUNDARIES", "CONVENTIONS", "METHODS"]

#: A NumPy or CuPy array.
Array = Any
#: An :data:`Array`, or anything :func:`numpy.asarray` accepts.
ArrayLike = Any
Mode = Literal["full", "same", "valid", "circular"]
Boundary = Literal["zero", "periodic", "symmetric", "reflect", "replicate"]
Convention = Literal["scipy", "matlab"]
Method = Literal["auto", "fft", "dct", "cg", "fft_approx"]
#: The values of each choice, for checks and command-line choices (one vocabulary).
MODES: tuple[str, ...] = get_args(Mode)
BOUNDARIES: tuple[str, ...] = get_args(Boundary)
CONVENTIONS: tuple[str, ...] = get_args(Convention)
METHODS: tuple[str, ...] = get_args(Method)
#: One non-negative number for every image, or one per image (batch shape).
PerImage = float | ArrayLike
#: A regularizer of :func:`gpu_deconv.deconvolve`: None (identity), a built-in name, a kernel or a
#: ConvolutionOperator (both ArrayLike here, to keep this module free of imports), or (weight, G) pairs.
Reg = None | Literal["laplacian", "gradient"] | ArrayLike | Sequence[tuple[float, Any]]
