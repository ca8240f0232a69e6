"""Independent references for the tests: direct sums, numpy.pad, explicit matrices.

Nothing here calls gpu_deconv; every definition is written from the documented
semantics (SciPy, MATLAB/Octave conv2, numpy.pad) so that the package is
checked against something it does not share code with.
"""

import itertools

import numpy as np
import scipy.signal

NP_PAD_MODE = {"zero": "constant", "periodic": "wrap", "symmetric": "symmetric",
               "reflect": "reflect", "replicate": "edge"}


def full_direct(x, h):
    """Full linear convolution over the trailing h.ndim axes, by shifted adds (float64)."""
    nd = h.ndim
    n = x.shape[x.ndim - nd:]
    out = np.zeros(x.shape[:x.ndim - nd] + tuple(a + b - 1 for a, b in zip(n, h.shape)))
    for i in itertools.product(*(range(k) for k in h.shape)):
        sl = (Ellipsis,) + tuple(slice(ii, ii + nn) for ii, nn in zip(i, n))
        out[sl] += h[i] * x
    return out


def conv2_matlab(x, h, shape="full"):
    """MATLAB/Octave conv2/convn semantics, N-D, written from the documentation.

    'same' is the central part starting at k//2 (MATLAB floors the other way
    from SciPy for even k); 'valid' is empty (size max(n-k+1, 0)) when the
    kernel is larger than the image.
    """
    nd = h.ndim
    n = x.shape[x.ndim - nd:]
    if shape == "valid":
        m = tuple(max(a - b + 1, 0) for a, b in zip(n, h.shape))
        if 0 in m:
            return np.zeros(x.shape[:x.ndim - nd] + m)
    f = full_direct(x, h)
    if shape == "full":
        return f
    if shape == "same":
        sl = tuple(slice(k // 2, k // 2 + a) for a, k in zip(n, h.shape))
    else:
        sl = tuple(slice(k - 1, a) for a, k in zip(n, h.shape))
    return f[(Ellipsis,) + sl]


def filter2_matlab(h, x, shape="full"):
    """MATLAB filter2(h, x, shape) = conv2(x, rot90(h, 2), shape)."""
    return conv2_matlab(x, h[(slice(None, None, -1),) * h.ndim], shape)


def window(n, k, mode, convention):
    """(start j0 in the full result, output length m) of a mode, per axis."""
    if mode == "full":
        return 0, n + k - 1
    if mode in ("same", "circular"):
        return ((k - 1) // 2 if convention == "scipy" else k // 2), n
    return k - 1, max(n - k + 1, 0)


def ref_convolve(x, h, mode, boundary, convention="scipy"):
    """numpy.pad by the boundary model, then a direct 'valid' convolution.

    The pad widths are those that put the mode's window of the full result
    exactly on the valid part: k-1-j0 before, j0+m-n after.
    """
    if mode == "circular":
        boundary = "periodic"
    nd = h.ndim
    n = x.shape[x.ndim - nd:]
    widths = [(0, 0)] * (x.ndim - nd)
    for a, k in zip(n, h.shape):
        j0, m = window(a, k, mode, convention)
        if m == 0:
            return np.zeros(x.shape[:x.ndim - nd] + tuple(
                window(a2, k2, mode, convention)[1] for a2, k2 in zip(n, h.shape)))
        widths.append((k - 1 - j0, j0 + m - a))
    xe = np.pad(x.astype(np.float64), widths, mode=NP_PAD_MODE[boundary])
    f = full_direct(xe, h.astype(np.float64))
    ne = xe.shape[xe.ndim - nd:]
    return f[(Ellipsis,) + tuple(slice(k - 1, a) for a, k in zip(ne, h.shape))]


def ref_matrix(h, n, mode, boundary, convention="scipy"):
    """Explicit matrix of ref_convolve: one column per basis image."""
    N = int(np.prod(n))
    cols = [ref_convolve(e.reshape(n), h, mode, boundary, convention).ravel() for e in np.eye(N)]
    return np.array(cols).T


def psf2otf_convolve(x, h):
    """MATLAB imfilter(x, h, 'circular', 'conv') via psf2otf: centre k//2 moved to index 0."""
    nd = h.ndim
    shp = x.shape[x.ndim - nd:]
    hp = np.zeros(shp)
    hp[tuple(slice(0, k) for k in h.shape)] = h
    hp = np.roll(hp, tuple(-(k // 2) for k in h.shape), axis=tuple(range(nd)))
    otf = np.fft.fftn(hp)
    axes = tuple(range(-nd, 0))
    return np.real(np.fft.ifftn(np.fft.fftn(x, axes=axes) * otf, axes=axes))


def scipy_convolve(x, h, mode):
    """scipy.signal.convolve applied image by image over leading batch axes."""
    nd = h.ndim
    b = x.shape[:x.ndim - nd]
    flat = x.reshape((-1,) + x.shape[x.ndim - nd:])
    out = [scipy.signal.convolve(xi.astype(np.float64), h.astype(np.float64), mode) for xi in flat]
    return np.array(out).reshape(b + out[0].shape)
