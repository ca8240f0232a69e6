"""gpu_deconv: convolution least-squares on the GPU (CuPy) and the CPU (NumPy/SciPy), one API.

The array module is chosen by the input: NumPy arrays are computed with
NumPy and scipy.fft, CuPy arrays on their GPU.
"""

from ._backend import get_workers, set_workers
from ._cache import cache_info, clear_cache, set_cache_limits
from .conv import convolve, correlate
from .grad import grad_h, grad_x
from .operators import ConvolutionOperator
from .solvers.cg import ConvergenceWarning, SolveInfo, cg
from .solvers.deconvolve import LamSelectionWarning, choose_lam, deconvolve, estimate_noise
from .solvers.kernel import estimate_kernel
from .solvers.lam import LamCurve
from .solvers.multichannel import solve_multichannel

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "ConvolutionOperator",
    "LamCurve",
    "LamSelectionWarning",
    "SolveInfo",
    "cg",
    "choose_lam",
    "estimate_noise",
    "deconvolve",
    "estimate_kernel",
    "cache_info",
    "clear_cache",
    "convolve",
    "correlate",
    "get_workers",
    "grad_h",
    "grad_x",
    "set_cache_limits",
    "set_workers",
    "solve_multichannel",
    "__version__",
]
