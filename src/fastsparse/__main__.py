"""Command line: python -m fastsparse {demo,bench} ..."""
import argparse
import math
import sys

from .bench_e2e import ARCHS, ENGINES


_BAD = object()


def _check(convert, ok, what, text):
    try:
        value = convert(text.strip())
    except ValueError:
        value = _BAD
    if value is _BAD or not ok(value):
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not {what}")
    return value


def _one(convert, ok, what):
    """An argparse type: one value, converted and checked."""
    return lambda text: _check(convert, ok, what, text)


def _list(convert, ok, what):
    """An argparse type: comma-separated values, each converted and checked."""
    return lambda text: tuple(_check(convert, ok, what, v) for v in text.split(","))


_sparsities = _list(float, lambda v: 0 <= v < 1, "a sparsity in [0, 1)")
_positive_int = _one(int, lambda v: v >= 1, "an int >= 1")
_positive_ints = _list(int, lambda v: v >= 1, "an int >= 1")
_threads = _list(lambda v: None if v == "all" else int(v), lambda v: v is None or v >= 1,
                 "a thread count >= 1 or 'all'")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastsparse")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="MobileNet v2 at 90 %% from random weights: its summary, a "
                                "check against the NumPy reference, and a latency table against "
                                "dense engines on 1 thread and all")
    bench = sub.add_parser("bench", help="benchmarks (tables, not pass/fail)")
    bench.add_argument("what", choices=["spmm", "dwconv", "e2e"],
                       help="spmm: 1x1 layers; dwconv: depthwise + first conv; e2e: whole "
                            "networks vs ONNX Runtime and PyTorch (issue 7)")
    common = bench.add_argument_group("spmm and e2e")
    common.add_argument("--net", type=_list(str, lambda v: v in ARCHS, f"one of {ARCHS}"),
                        default=ARCHS)
    common.add_argument("--sparsity", type=_sparsities, default=None,
                        help="default 0.7,0.8,0.9,0.95 (e2e: 0,0.7,0.8,0.9,0.95)")
    common.add_argument("--threads", type=_threads, default=(1, None),
                        help="comma-separated thread counts; 'all' = every CPU (default 1,all)")
    bench.add_argument("--repeat", type=_positive_int, default=None,
                       help="timed rounds (default 21; e2e: 30; dwconv: 15)")
    spmm = bench.add_argument_group("spmm only")
    spmm.add_argument("--block-size", type=_list(int, lambda v: v in (1, 2, 4, 8),
                                                 "a block size of 1, 2, 4 or 8"), default=(1,))
    spmm.add_argument("--sample-ms", type=float, default=2.0,
                      help="each timed sample runs one layer's calls for at least this long "
                           "(default 2: steady state; 0.2: large layers timed cold, one call "
                           "after another layer's)")
    e2e = bench.add_argument_group("e2e only")
    e2e.add_argument("--batch", type=_positive_ints, default=(1, 8))
    e2e.add_argument("--width", type=_one(float, lambda v: 0 < v < math.inf,
                                          "a width multiplier > 0"), default=1.0)
    e2e.add_argument("--size", type=_one(int, lambda v: v >= 32, "an image size >= 32"),
                     default=224, help="input height = width")
    e2e.add_argument("--block4", type=_sparsities, default=(0.9,),
                     help="sparsities also run with blocks of 4 output channels (default 0.9)")
    e2e.add_argument("--engines", type=_list(str, lambda v: v in ENGINES, f"one of {ENGINES}"),
                     default=ENGINES)
    e2e.add_argument("--plot", default="bench_e2e.png", help="PNG path ('' for none)")
    e2e.add_argument("--consecutive", type=_positive_int, default=1,
                     help="calls of one engine in a row per round, the last one timed (default "
                          "1: every timed call follows another engine's; 2: warm caches)")
    spmm.add_argument("--kernel", default=None, help="force one spmm variant by name")
    bench.add_argument("--isa", default=None, help="force an ISA (default: the best available)")
    args = parser.parse_args(argv)

    from . import available_isas, set_isa, spmm_kernels
    from . import bench as b
    if args.command == "demo":
        b.demo()
        return 0
    if args.isa:
        if args.isa not in available_isas():
            bench.error(f"--isa {args.isa!r}: this CPU runs {', '.join(available_isas())}")
        set_isa(args.isa)
    # Options only some benchmarks take: refused, not ignored, by the others.
    takes = {"net": ("spmm", "e2e"), "sparsity": ("spmm", "e2e"), "threads": ("spmm", "e2e"),
             "block_size": ("spmm",), "kernel": ("spmm",), "sample_ms": ("spmm",),
             **{d: ("e2e",) for d in ("batch", "width", "size", "block4", "engines", "plot",
                                      "consecutive")}}
    ignored = [d for d, whats in takes.items()
               if getattr(args, d) != bench.get_default(d) and args.what not in whats]
    if ignored:
        bench.error(f"{args.what} does not take "
                     + ", ".join("--" + d.replace("_", "-") for d in ignored))
    if args.kernel is not None and args.kernel not in spmm_kernels():
        bench.error(f"--kernel {args.kernel!r} is not one of {', '.join(spmm_kernels())}")
    if args.what == "e2e":
        import os

        from . import bench_e2e
        archs = args.net
        sparsities = args.sparsity if args.sparsity is not None else (0.0, 0.7, 0.8, 0.9, 0.95)
        configs = tuple((s, 1) for s in sparsities) + tuple((s, 4) for s in args.block4)
        if (0.0, 1) not in configs:
            configs = ((0.0, 1),) + configs  # ORT dense is every speedup's baseline
        threads = tuple((os.cpu_count() or 1) if t is None else t for t in args.threads)
        threads = tuple(dict.fromkeys(threads))
        bench_e2e.run_e2e(archs=archs, configs=configs, batches=args.batch, threads=threads,
                          repeat=30 if args.repeat is None else args.repeat, width=args.width,
                          input_size=(args.size, args.size), engines=list(args.engines),
                          plot=args.plot or None, consecutive=args.consecutive)
        return 0
    if not 0 <= args.sample_ms < float("inf"):
        bench.error(f"--sample-ms must be a finite number >= 0, got {args.sample_ms}")
    if args.what == "dwconv":
        b.bench_dwconv(repeat=15 if args.repeat is None else args.repeat)
        return 0
    repeat = 21 if args.repeat is None else args.repeat
    b.bench_spmm(networks=args.net,
                 sparsities=args.sparsity or (0.7, 0.8, 0.9, 0.95),
                 threads=args.threads, block_sizes=args.block_size, repeat=repeat,
                 kernel=args.kernel, sample_ms=args.sample_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
