"""Build of fastsparse's extension.

Each ISA's kernels are compiled in their own translation unit with their own flags and linked
into the one extension; dispatch picks among them at run time. Nothing here looks at the
build machine's CPU: a compiler probe only asks whether the *compiler* can target an ISA.
"""
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = os.path.join("src", "fastsparse", "csrc")
# Flags every kernel translation unit gets: only explicit FMAs fuse.
COMMON_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off"]
# Appended last to every compile (kernels and the Cython module), e.g. "-O1" for the
# sanitizer build in tools/sanitize.sh, where -O3 makes the instrumented kernels slow to build.
EXTRA_FLAGS = os.environ.get("FASTSPARSE_CFLAGS", "").split()

# (name, source, flags, probe): the probe is a tiny program using the ISA's intrinsics.
ISA_UNITS = [
    ("scalar", "kernels_scalar.c", ["-fno-tree-vectorize"], None),
    ("sse2", "kernels_sse2.c", ["-msse2"],
     "#include <emmintrin.h>\nint main(void){__m128 a=_mm_set1_ps(1.f);"
     "a=_mm_add_ps(a,a);return (int)_mm_cvtss_f32(a);}"),
    ("avx2", "kernels_avx2.c", ["-mavx2", "-mfma"],
     "#include <immintrin.h>\nint main(void){__m256 a=_mm256_set1_ps(1.f);"
     "a=_mm256_fmadd_ps(a,a,a);__m256i m=_mm256_set1_epi32(-1);"
     "a=_mm256_maskload_ps((const float*)&m,m);return (int)_mm256_cvtss_f32(a);}"),
    ("avx512", "kernels_avx512.c", ["-mavx512f"],
     "#include <immintrin.h>\nint main(void){float f[16]={0};__m512 a=_mm512_set1_ps(1.f);"
     "a=_mm512_fmadd_ps(a,a,_mm512_maskz_loadu_ps((__mmask16)3,f));"
     "return (int)_mm512_reduce_add_ps(a);}"),
    ("neon", "kernels_neon.c", [],
     "#include <arm_neon.h>\nint main(void){float32x4_t a=vdupq_n_f32(1.f);"
     "a=vfmaq_f32(a,a,a);return (int)vgetq_lane_f32(a,0);}"),
]

# Test build only: FASTSPARSE_SIMDE_NEON=1 compiles the NEON unit on x86-64 through SIMDe
# (libsimde-dev) and registers "neon" as an ISA this build supports (when the CPU has AVX2+FMA,
# which the unit is compiled for so that vfmaq_f32 stays fused), so the whole test suite can run
# with FASTSPARSE_ISA=neon at native speed. Never for a release build.
SIMDE_NEON = os.environ.get("FASTSPARSE_SIMDE_NEON", "") not in ("", "0")
if SIMDE_NEON:
    ISA_UNITS = [u for u in ISA_UNITS if u[0] != "neon"] + [
        ("neon", "kernels_neon.c", ["-mavx2", "-mfma", "-DFS_NEON_VIA_SIMDE"],
         "#define SIMDE_ENABLE_NATIVE_ALIASES\n#include <simde/arm/neon.h>\n"
         "int main(void){float32x4_t a=vdupq_n_f32(1.f);"
         "a=vfmaq_f32(a,a,a);return (int)vgetq_lane_f32(a,0);}"),
    ]

OPENMP_PROBE = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}"


def usable_cpus():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def build_jobs():
    """FASTSPARSE_BUILD_JOBS as a count of concurrent compiles; 0 (or unset): one per CPU."""
    text = os.environ.get("FASTSPARSE_BUILD_JOBS", "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise RuntimeError(f"FASTSPARSE_BUILD_JOBS must be a whole number of jobs, got {text!r}")
    return int(text)


def log(msg):
    print(f"fastsparse build: {msg}", file=sys.stderr)


class BuildExt(build_ext):
    """Compiles the per-ISA kernel units with their own flags, probes OpenMP."""

    def _try_compile(self, code, flags, link=False):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(code)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                if link:
                    self.compiler.link_executable(objs, "probe", output_dir=tmp,
                                                  extra_postargs=flags)
            except Exception:
                return False
        return True

    def build_extensions(self):
        if self.compiler.compiler_type != "unix":
            raise RuntimeError("fastsparse builds with gcc or clang (a unix-style compiler)")
        for ext in self.extensions:
            units, macros = [], []
            for name, source, flags, probe in ISA_UNITS:
                if probe is not None and not self._try_compile(probe, flags):
                    if SIMDE_NEON and name == "neon":
                        raise RuntimeError("FASTSPARSE_SIMDE_NEON=1 but the NEON unit does not "
                                           "compile through SIMDe (apt-get install libsimde-dev)")
                    log(f"{name} kernels: skipped (the compiler cannot target {name})")
                    continue
                units.append((name, source, flags))
                if name != "scalar":
                    macros.append((f"FS_HAVE_{name.upper()}", "1"))
                if SIMDE_NEON and name == "neon":
                    macros.append(("FS_NEON_VIA_SIMDE", "1"))
                    log("neon kernels: TEST BUILD through SIMDe on x86-64 (FASTSPARSE_SIMDE_NEON)")

            def compile_unit(unit, ext=ext):
                name, source, flags = unit
                objs = self.compiler.compile(
                    [os.path.join(CSRC, source)], output_dir=self.build_temp,
                    extra_postargs=COMMON_FLAGS + flags + EXTRA_FLAGS, depends=ext.depends)
                log(f"{name} kernels: built with {' '.join(flags) or 'no extra flags'}")
                return objs

            # The units are independent compiler runs (10-80 s each): one per core at a time,
            # or as many as -j or FASTSPARSE_BUILD_JOBS say.
            jobs = self.parallel if isinstance(self.parallel, int) and self.parallel > 0 \
                else build_jobs() or usable_cpus()
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(units)))) as pool:
                futures = [pool.submit(compile_unit, unit) for unit in units]
                try:
                    objects = [o for f in futures for o in f.result()]
                except BaseException:
                    for f in futures:  # the units not started yet
                        f.cancel()
                    raise
            ext.extra_objects = objects + list(ext.extra_objects or [])
            ext.define_macros = list(ext.define_macros or []) + macros
            if self._try_compile(OPENMP_PROBE, ["-fopenmp"], link=True):
                ext.extra_compile_args = list(ext.extra_compile_args or []) + ["-fopenmp"]
                ext.extra_link_args = list(ext.extra_link_args or []) + ["-fopenmp"]
                log("OpenMP: on (threads split spatial tiles and images)")
            else:
                log("OpenMP: off (no working -fopenmp; every call runs on one thread)")
        super().build_extensions()


HEADERS = [os.path.join(CSRC, h) for h in os.listdir(CSRC) if h.endswith(".h")]
extension = Extension(
    "fastsparse._kernels",
    sources=["src/fastsparse/_kernels.pyx", os.path.join(CSRC, "dispatch.c")],
    depends=HEADERS + [os.path.join(CSRC, u[1]) for u in ISA_UNITS],
    extra_compile_args=["-O3", "-ffp-contract=off"] + EXTRA_FLAGS,
)

setup(
    ext_modules=cythonize([extension], compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
