"""Command line: python -m fastsparse {demo,bench} ..."""
import argparse
import sys


def _floats(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def _threads(text):
    return tuple(None if v == "all" else int(v) for v in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastsparse")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a few MobileNet v2 layers, sparse vs dense, one thread")
    bench = sub.add_parser("bench", help="benchmarks (tables, not pass/fail)")
    bench.add_argument("what", choices=["spmm", "dwconv", "e2e"],
                       help="spmm: 1x1 layers; dwconv: depthwise + first conv; e2e: whole "
                            "networks vs ONNX Runtime and PyTorch (issue 7)")
    bench.add_argument("--net", default="mobilenet_v2,mobilenet_v1")
    bench.add_argument("--sparsity", type=_floats, default=None,
                       help="default 0.7,0.8,0.9,0.95 (e2e: 0,0.7,0.8,0.9,0.95)")
    bench.add_argument("--block-size", type=lambda t: tuple(int(v) for v in t.split(",")),
                       default=(1,))
    bench.add_argument("--threads", type=_threads, default=(1, None),
                       help="comma-separated thread counts; 'all' = every CPU (default 1,all)")
    bench.add_argument("--repeat", type=int, default=None, help="default 21 (e2e: 30)")
    spmm = bench.add_argument_group("spmm only")
    spmm.add_argument("--sample-ms", type=float, default=2.0,
                      help="each timed sample runs one layer's calls for at least this long "
                           "(default 2: steady state; 0.2: large layers timed cold, one call "
                           "after another layer's)")
    e2e = bench.add_argument_group("e2e only")
    e2e.add_argument("--batch", type=lambda t: tuple(int(v) for v in t.split(",")), default=(1, 8))
    e2e.add_argument("--width", type=float, default=1.0)
    e2e.add_argument("--size", type=int, default=224, help="input height = width")
    e2e.add_argument("--block4", type=_floats, default=(0.9,),
                     help="sparsities also run with blocks of 4 output channels (default 0.9)")
    e2e.add_argument("--engines", default="fastsparse,onnxruntime,torch")
    e2e.add_argument("--plot", default="bench_e2e.png", help="PNG path ('' for none)")
    e2e.add_argument("--consecutive", type=int, default=1,
                     help="calls of one engine in a row per round, the last one timed (default "
                          "1: every timed call follows another engine's; 2: warm caches)")
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
    if args.what == "e2e":
        import os

        from . import bench_e2e
        archs = tuple(args.net.split(","))
        sparsities = args.sparsity if args.sparsity is not None else (0.0, 0.7, 0.8, 0.9, 0.95)
        configs = tuple((s, 1) for s in sparsities) + tuple((s, 4) for s in args.block4)
        if (0.0, 1) not in configs:
            configs = ((0.0, 1),) + configs  # ORT dense is every speedup's baseline
        threads = tuple((os.cpu_count() or 1) if t is None else t for t in args.threads)
        threads = tuple(dict.fromkeys(threads))
        bench_e2e.run_e2e(archs=archs, configs=configs, batches=args.batch, threads=threads,
                          repeat=args.repeat or 30, width=args.width,
                          input_size=(args.size, args.size), engines=args.engines.split(","),
                          plot=args.plot or None, consecutive=args.consecutive)
        return 0
    repeat = args.repeat or 21
    if not 0 <= args.sample_ms < float("inf"):
        parser.error(f"--sample-ms must be a finite number >= 0, got {args.sample_ms}")
    if args.what == "dwconv":
        b.bench_dwconv(repeat=repeat)
        return 0
    b.bench_spmm(networks=tuple(args.net.split(",")),
                 sparsities=args.sparsity or (0.7, 0.8, 0.9, 0.95),
                 threads=args.threads, block_sizes=args.block_size, repeat=repeat,
                 kernel=args.kernel, sample_ms=args.sample_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
