"""Command line: python -m fastsparse {demo,bench} ..."""
import argparse
import sys


def _floats(text):
    return tuple(float(v) for v in text.split(","))


def _threads(text):
    return tuple(None if v == "all" else int(v) for v in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastsparse")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a few MobileNet v2 layers, sparse vs dense, one thread")
    bench = sub.add_parser("bench", help="benchmarks (tables, not pass/fail)")
    bench.add_argument("what", choices=["spmm", "dwconv"])
    bench.add_argument("--net", default="mobilenet_v2,mobilenet_v1")
    bench.add_argument("--sparsity", type=_floats, default=(0.7, 0.8, 0.9, 0.95))
    bench.add_argument("--block-size", type=lambda t: tuple(int(v) for v in t.split(",")),
                       default=(1,))
    bench.add_argument("--threads", type=_threads, default=(1, None),
                       help="comma-separated thread counts; 'all' = every CPU (default 1,all)")
    bench.add_argument("--repeat", type=int, default=21)
    bench.add_argument("--kernel", default=None, help="force one spmm variant by name")
    bench.add_argument("--isa", default=None, help="force an ISA (default: the best available)")
    args = parser.parse_args(argv)

    from . import bench as b
    from . import set_isa
    if args.command == "demo":
        b.demo()
        return 0
    if args.isa:
        set_isa(args.isa)
    if args.what == "dwconv":
        b.bench_dwconv(repeat=args.repeat)
        return 0
    b.bench_spmm(networks=tuple(args.net.split(",")), sparsities=args.sparsity,
                 threads=args.threads, block_sizes=args.block_size, repeat=args.repeat,
                 kernel=args.kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
