"""Command-line tool ``gpu-deconv`` (also ``python -m gpu_deconv``)."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args):
    from .demo import run_demo

    res = run_demo(args.output, size=args.size, device=args.device, figure=not args.no_figure)
    return 0 if res["converged"] else 1


def build_parser():
    p = argparse.ArgumentParser(prog="gpu-deconv", description="Exact convolution least squares, CPU or GPU.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="deconvolve the built-in synthetic scene and report the errors")
    d.add_argument("-o", "--output", default="gpu_deconv_demo", help="output folder (default: %(default)s)")
    d.add_argument("--size", type=int, default=256, help="scene size in pixels (default: %(default)s)")
    d.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    d.add_argument("--no-figure", action="store_true", help="skip the matplotlib figure")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
