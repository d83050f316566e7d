"""fastsparse: pruned convolutional networks, faster than dense on CPUs.

Sparse 1x1 convolutions in CHW layout after Elsen et al., "Fast Sparse ConvNets" (CVPR 2020),
with SIMD kernels chosen at run time (scalar, SSE2, AVX2+FMA, AVX-512F).
"""
from . import prune, reference
from ._dispatch import (available_isas, get_num_threads, isa, set_isa, set_num_threads,
                        spmm_kernels)
from .chw import add, chw_kernels, conv2d, depthwise_conv2d, global_avg_pool
from .models import MobileNetV1, MobileNetV2
from .ops import linear, sparse_conv1x1
from .sparse import SparseMatrix


def load(path):
    """A network saved with net.save(path). The .fsnet format holds no code: loading parses a
    JSON header and copies arrays, and rejects truncated, corrupted or foreign files with a
    ValueError."""
    from ._serialize import load_network
    return load_network(path)


__version__ = "0.1.0.dev0"

__all__ = [
    "MobileNetV1", "MobileNetV2", "SparseMatrix", "add", "available_isas", "chw_kernels", "conv2d",
    "depthwise_conv2d", "global_avg_pool", "get_num_threads", "isa", "linear", "load", "prune",
    "reference", "set_isa", "set_num_threads", "sparse_conv1x1", "spmm_kernels",
]
