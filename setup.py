"""Build entry for pip: compiles turbodiffusion._C (one abi3 extension) for the archs in TD_CUDA_ARCHS.

Environment:
  TD_CUDA_ARCHS   ';'-separated arch list, e.g. "90a;120a" (default: the local GPU's arch, or
                  "90a;120a" when no GPU is visible).
  TD_SKIP_CUDA=1  install the pure-Python package; every op then runs its CPU reference.
  MAX_JOBS        parallel nvcc jobs (torch's ninja build honours it).
  TD_GEMM_ALL_CONFIGS=1  also compile the sm90 GEMM's candidate tiles (gemm/heuristics.h), for
                  `benchmarks/bench_gemm.py --sweep`; off by default to keep the build short.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The toolkit that `nvcc` on PATH belongs to (resolving wrapper scripts and links)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:  # `nvcc --dryrun` prints `#$ _HERE_=<toolkit>/bin`; this sees through wrapper scripts
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
        m = re.search(r"_HERE_=(\S+)", out)
        if m:
            return os.path.dirname(os.path.realpath(m.group(1)))
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def cutlass_include_dirs():
    """CUTLASS/CuTe headers from the nvidia-cutlass wheel (never vendored)."""
    try:
        import cutlass_library  # noqa: F401  (the wheel's package)
    except ImportError:
        return []
    base = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dirs = [os.path.join(base, "include"), os.path.join(base, "tools", "util", "include")]
    return [d for d in dirs if os.path.isdir(d)]


def default_archs():
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            # sm_90 and sm_120 need the arch-specific "a" target for wgmma / block-scaled MMA.
            return f"{major}{minor}" + ("a" if major in (9, 10, 12) else "")
    except Exception:  # a broken driver must not break a CPU install
        pass
    return "90a;120a"


def gencode_flags(archs):
    flags = []
    for arch in archs:
        num = arch.rstrip("a")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if not arch.endswith("a"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def extension_modules():
    if os.environ.get("TD_SKIP_CUDA", "0") == "1":
        print("turbodiffusion: TD_SKIP_CUDA=1, building without _C (CPU references only)")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("turbodiffusion: no nvcc on PATH, building without _C (CPU references only)")
        return [], {}
    os.environ.setdefault("CUDA_HOME", cuda_home)
    from torch.utils import cpp_extension

    archs = [a for a in os.environ.get("TD_CUDA_ARCHS", default_archs()).replace(",", ";").split(";") if a]
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    include_dirs += cutlass_include_dirs()
    # CPU machines' toolkits lack cuBLAS/cuSPARSE headers that torch's CUDA headers include; a CUDA
    # build of torch ships them in the nvidia/cu13 wheel folder.
    for sp in sys.path:
        cand = os.path.join(sp, "nvidia", "cu13", "include")
        if os.path.isdir(cand):
            include_dirs.append(cand)
            break
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    sources += sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # NDEBUG: CUTLASS's device-side asserts are calls to __assertfail, and ptxas serializes every wgmma
    # of a kernel whose pipeline crosses a call (C7510: all sm90 GEMM kernels were serialized without it).
    # Our own device code has no assert; checks are TORCH_CHECK on the host.
    common = ["-O3", "-std=c++20", "-DNDEBUG", "-DTD_ARCHS=\"" + ";".join(archs) + "\""]
    if os.environ.get("TD_GEMM_ALL_CONFIGS", "0") == "1":
        common.append("-DTD_GEMM_ALL_CONFIGS=1")
    nvcc = common + gencode_flags(archs) + [
        "-lineinfo",
        "--expt-relaxed-constexpr",
        "--expt-extended-lambda",
        "-Xptxas=-warn-spills,-warn-lmem-usage",
        "--resource-usage",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ]
    ext = cpp_extension.CUDAExtension(
        name="turbodiffusion._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": common, "nvcc": nvcc},
        py_limited_api=True,
    )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = extension_modules()
setup(
    packages=find_packages(include=["turbodiffusion", "turbodiffusion.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
