"""``python -m numadam``: command-line tools.

``python -m numadam bench [--quick] [--plot FILE.png]``
    Compare numadam with NumPy, torch and optax on this machine.
``python -m numadam compile [--clipping]``
    Compile every CPU kernel signature into Numba's on-disk cache now (for
    images and CI: the first step of later processes then skips compilation);
    ``--clipping`` adds the kernels of steps with ``max_grad_norm`` or
    ``clip_value``.
    Exits with status 1, compiling nothing, where no cache can be written.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numadam")
    commands = parser.add_subparsers(dest="command", required=True)
    from numadam import bench as _bench
    _bench.add_arguments(commands.add_parser(
        "bench", help="compare numadam with NumPy, torch and optax on this machine"))
    compile_parser = commands.add_parser(
        "compile", help="fill Numba's on-disk cache with every kernel")
    compile_parser.add_argument(
        "--clipping", action="store_true",
        help="also the kernels of steps with max_grad_norm or clip_value")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench.main(args)
    from numadam.core.jitcache import CACHE
    if not CACHE:
        print("python -m numadam compile: nothing was compiled: Numba finds no writable "
              "cache directory, so compiled kernels cannot be kept; set NUMBA_CACHE_DIR to a "
              "writable directory (and keep it set when numadam runs)", file=sys.stderr)
        return 1
    from numadam import rules
    from numadam.cpu.kernels import compile_kernels
    for name, seconds in compile_kernels([rules.rule(name) for name in rules.REGISTRY],
                                         clipping=args.clipping):
        print(f"{name}: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
