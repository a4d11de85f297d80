"""Host-side checks of csrc/common/cuda.cuh's element helpers, without a GPU.

The helpers that decide how a logit is loaded (``ld``, ``ld_logit``) and how the in-place
gradient scale rounds (``ld_scale``, ``scale_elem``) are ``__host__ __device__``: these tests
compile tiny host programs against the header with nvcc and the extension's own CUDA flags and
run them, and compile ``ld_logit`` into a kernel for sm_90 to check its PTX. They skip when nvcc
is missing. The binding of ``scale_inplace_cuda`` is checked as far as it goes without a device.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC = os.environ.get("CUDACXX") or shutil.which("nvcc")
FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-DMPLFAST_WITH_CUDA=1", f"-I{CSRC}"]

pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc not found"),
    pytest.mark.skipif(not (CSRC / "common" / "cuda.cuh").exists(), reason="csrc/ not in this checkout"),
]

PROGRAM = r"""
#include <cmath>
#include <cstdio>
#include "common/cuda.cuh"
using namespace mplfast::cuda;

__global__ void probe_ld_logit(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = ld_logit(in[i]);
}

static int fails = 0;
static void expect(const char* what, float got, bool ok) {
  if (!ok) { std::printf("FAIL %s: got %g\n", what, got); ++fails; }
}
static __half half_bits(unsigned short b) { __half_raw r; r.x = b; return __half(r); }
static __nv_bfloat16 bf16_bits(unsigned short b) { __nv_bfloat16_raw r; r.x = b; return __nv_bfloat16(r); }

int main() {
  const float nan = std::nanf("");
  const float inf = INFINITY;
  expect("fp32 NaN stays NaN", ld_logit(nan), std::isnan(ld_logit(nan)));
  expect("fp16 NaN stays NaN", ld_logit(half_bits(0x7e00)), std::isnan(ld_logit(half_bits(0x7e00))));
  expect("bf16 NaN stays NaN", ld_logit(bf16_bits(0x7fc0)), std::isnan(ld_logit(bf16_bits(0x7fc0))));
  expect("fp32 -inf floors to -1e30", ld_logit(-inf), ld_logit(-inf) == -1e30f);
  expect("fp16 -inf floors to -1e30", ld_logit(half_bits(0xfc00)), ld_logit(half_bits(0xfc00)) == -1e30f);
  expect("bf16 -inf floors to -1e30", ld_logit(bf16_bits(0xff80)), ld_logit(bf16_bits(0xff80)) == -1e30f);
  expect("-3e38 floors to -1e30", ld_logit(-3e38f), ld_logit(-3e38f) == -1e30f);
  expect("-1e30 stays", ld_logit(-1e30f), ld_logit(-1e30f) == -1e30f);
  expect("finite stays", ld_logit(-87.5f), ld_logit(-87.5f) == -87.5f);
  expect("+inf stays +inf", ld_logit(inf), ld_logit(inf) == inf);
  expect("fp16 value", ld_logit(half_bits(0x3c00)), ld_logit(half_bits(0x3c00)) == 1.0f);
  if (fails == 0) std::printf("OK\n");
  return fails;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("cuda_helpers") / "probe.cu"
    src.write_text(PROGRAM)
    return src


def test_ld_logit_host_semantics(program):
    """NaN logits stay NaN (the reference, Triton and the CPU kernel give a NaN loss); -inf and
    anything below -1e30 become -1e30; other values pass through."""
    exe = program.with_suffix("")
    subprocess.run([NVCC, *FLAGS, str(program), "-o", str(exe)], check=True, capture_output=True, timeout=300)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout + res.stderr


def test_ld_logit_device_code_keeps_nan(program):
    """On the device, with --use_fast_math, the floor must be a compare-and-select: PTX max.f32
    returns the non-NaN operand, which would turn a NaN logit into -1e30."""
    ptx = program.with_suffix(".ptx")
    subprocess.run([NVCC, *FLAGS, "-arch=sm_90", "-ptx", str(program), "-o", str(ptx)], check=True,
                   capture_output=True, timeout=300)
    text = ptx.read_text()
    body = text[text.index(".entry _Z14probe_ld_logit"):]
    body = body[: body.index("\n}") + 2]
    assert "ld.global" in body, body
    assert not re.search(r"\bmax(\.\w+)*\.f32\b", body), f"ld_logit compiles to a NaN-dropping max:\n{body}"


SCALE_PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include "common/cuda.cuh"
using namespace mplfast;
using namespace mplfast::cuda;

template <typename T> static unsigned short bits16(T v) { unsigned short b; std::memcpy(&b, &v, 2); return b; }
template <typename T> static T from16(unsigned short b) { T v; std::memcpy(&v, &b, 2); return v; }

// cases: {x bits, scale (fp32), expected bits of torch's x * scale}
struct Case16 { unsigned short x; float s; unsigned short want; };
struct Case32 { float x; float s; float want; };
static const Case16 kHalf[] = { HALF_CASES };
static const Case16 kBf16[] = { BF16_CASES };
static const Case32 kFloat[] = { FLOAT_CASES };

int main() {
  int fails = 0;
  for (const Case16& c : kHalf) {
    const unsigned short got = bits16(scale_elem(from16<__half>(c.x), c.s));
    if (got != c.want) { std::printf("FAIL fp16 %04x * %g: %04x != %04x\n", c.x, c.s, got, c.want); ++fails; }
  }
  for (const Case16& c : kBf16) {
    const unsigned short got = bits16(scale_elem(from16<__nv_bfloat16>(c.x), c.s));
    if (got != c.want) { std::printf("FAIL bf16 %04x * %g: %04x != %04x\n", c.x, c.s, got, c.want); ++fails; }
  }
  for (const Case32& c : kFloat) {
    const float got = scale_elem(c.x, c.s);
    if (std::memcmp(&got, &c.want, 4) != 0) { std::printf("FAIL fp32 %a * %a: %a != %a\n", c.x, c.s, got, c.want); ++fails; }
  }
  // ld_scale reads each dtype exactly
  const float f = 0.375f; const double d = 1.0 + 1e-12;
  const __half h = __float2half_rn(-2.5f); const __nv_bfloat16 b = __float2bfloat16_rn(3.0f);
  if (ld_scale(&f, kFloat32) != 0.375) { std::printf("FAIL ld_scale fp32\n"); ++fails; }
  if (ld_scale(&d, kFloat64) != d) { std::printf("FAIL ld_scale fp64\n"); ++fails; }
  if (ld_scale(&h, kFloat16) != -2.5) { std::printf("FAIL ld_scale fp16\n"); ++fails; }
  if (ld_scale(&b, kBFloat16) != 3.0) { std::printf("FAIL ld_scale bf16\n"); ++fails; }
  if (fails == 0) std::printf("OK\n");
  return fails;
}
"""


def _cases16(x: torch.Tensor, s: torch.Tensor) -> str:
    want = (x * s).view(torch.int16).int() & 0xFFFF   # torch: 0-dim fp32 scale, result in x's dtype
    xb = x.view(torch.int16).int() & 0xFFFF
    return ", ".join(f"{{0x{int(a):04x}, {float(s):.9g}f, 0x{int(w):04x}}}" for a, w in zip(xb, want))


def test_scale_elem_rounds_like_torch(tmp_path):
    """scale_inplace_cuda's element op equals torch's grad * grad_out bit for bit (fp16/bf16
    products in fp32, rounded once, subnormal results kept)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(200, generator=gen, dtype=torch.float64) * 3
    x[:8] = torch.tensor([1e-5, -3e-8, 6e4, -6.5e4, 1e-38, 0.0, -0.0, 2.0 ** -20], dtype=torch.float64)
    subst = {}
    for name, dt in (("HALF_CASES", torch.float16), ("BF16_CASES", torch.bfloat16)):
        xs = x.to(dt)
        parts = [_cases16(xs, torch.tensor(v, dtype=torch.float32)) for v in (0.37, -1.75, 1e-3, 3.1e-4)]
        subst[name] = ", ".join(parts)
    xf = x.float()
    xf[8] = 1e-38                                          # x * 0.01 is a subnormal fp32
    rows = []
    for v in (0.01, -1.75, 3.1e-4):
        sv = torch.tensor(v, dtype=torch.float32)
        rows += [f"{{{float(a).hex()}f, {float(sv).hex()}f, {float(w).hex()}f}}"
                 for a, w in zip(xf, xf * sv)]
    subst["FLOAT_CASES"] = ", ".join(rows)
    text = SCALE_PROGRAM
    for k, v in subst.items():
        text = text.replace(k, v)
    src = tmp_path / "scale.cu"
    src.write_text(text)
    exe = tmp_path / "scale"
    # device.cu's flags: the extension's CUDA flags plus -ftz=false (CMakeLists.txt)
    subprocess.run([NVCC, *FLAGS, "-ftz=false", str(src), "-o", str(exe)], check=True, capture_output=True,
                   timeout=300)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout[-3000:] + res.stderr


def test_scale_kernel_does_not_flush_subnormals(tmp_path):
    """The extension's CUDA flags include --use_fast_math (flush to zero); CMakeLists.txt gives
    csrc/common/device.cu -ftz=false, so the in-place scale keeps subnormal products as torch
    does. Compiled with those flags, its kernels have no .ftz multiply."""
    cmake = (CSRC.parent / "CMakeLists.txt").read_text()
    m = re.search(r"csrc/common/device\.cu PROPERTIES COMPILE_OPTIONS \"([^\"]*)\"", cmake)
    assert m and "-ftz=false" in m.group(1).split(";"), "device.cu must be built with -ftz=false"
    ptx = tmp_path / "device.ptx"
    subprocess.run([NVCC, *FLAGS, *m.group(1).split(";"), "-arch=sm_90", "-ptx", str(CSRC / "common" / "device.cu"),
                    "-o", str(ptx)], check=True, capture_output=True, timeout=300)
    text = ptx.read_text()
    assert "scale_inplace_kernel" in text and re.search(r"mul(\.rn)?\.f32", text)
    assert not re.search(r"mul(\.rn)?\.ftz\.f32", text), "flush-to-zero multiply in device.cu"


def test_scale_inplace_binding_without_a_device():
    """The binding opspy's backward calls exists with its documented argument names, rejects bad
    dtype codes before launching anything, and treats numel 0 as a no-op (no CUDA call)."""
    C = pytest.importorskip("mplfast._C")
    if not C.with_cuda:
        pytest.skip("mplfast._C built without CUDA")
    doc = C.scale_inplace_cuda.__doc__
    assert doc.startswith("scale_inplace_cuda(data: ") and all(
        f"{a}: " in doc for a in ("dtype", "numel", "scale", "scale_dtype", "stream"))
    C.scale_inplace_cuda(data=0, dtype=0, numel=0, scale=0, scale_dtype=0, stream=0)
    with pytest.raises(ValueError, match="unsupported dtype"):
        C.scale_inplace_cuda(0, 7, 10, 0, 0, 0)
    with pytest.raises(ValueError, match="unsupported scale dtype"):
        C.scale_inplace_cuda(0, 0, 10, 0, -1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["soft_ce", "uda", "grad_dot"])
def test_row_kernels_do_not_spill_on_sm90(op, tmp_path):
    """Every kernel of csrc/<op>/cuda.cu fits its registers on sm_90 (no stack, no spills) with
    the extension's flags; the row kernels' unrolled loads are held in registers, not memory."""
    res = subprocess.run([NVCC, *FLAGS, "-arch=sm_90", "-Xptxas", "-v", "-c", str(CSRC / op / "cuda.cu"),
                          "-o", str(tmp_path / "k.o")], check=True, capture_output=True, text=True, timeout=600)
    infos = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
    assert infos, res.stderr[-2000:]
    bad = [i for i in infos if i != ("0", "0", "0")]
    assert not bad, f"{op}: stack/spills {bad}\n{res.stderr[-3000:]}"


GRAD_DOT_PROGRAM = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "grad_dot/partials.cuh"
using namespace mplfast;
using namespace mplfast::cuda;
using namespace mplfast::cuda::grad_dot;

static const long long kSizes[] = { SIZES };
static const int kDtypes[] = { DTYPES };
static const int kMisaligned = MISALIGNED;  // this tensor starts one element past a 16-byte boundary

static unsigned rng = 12345u;
static float uniform() { rng = rng * 1664525u + 1013904223u; return float(rng >> 8) / 16777216.f * 2.f - 1.f; }

template <typename T> static T cvt(float v);
template <> float cvt<float>(float v) { return v; }
template <> __half cvt<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct Buf { void* base; void* p; };
template <typename T> static Buf make(long long n, bool ones, bool shift) {
  T* base = static_cast<T*>(std::aligned_alloc(64, size_t(n + 64) * sizeof(T)));
  T* p = base + (shift ? 1 : 0);
  for (long long k = 0; k < n; ++k) p[k] = cvt<T>(ones ? 1.f : uniform());
  return {base, p};
}
static Buf make_any(int dt, long long n, bool ones, bool shift) {
  if (dt == kFloat16) return make<__half>(n, ones, shift);
  if (dt == kBFloat16) return make<__nv_bfloat16>(n, ones, shift);
  return make<float>(n, ones, shift);
}
static double value(int dt, const void* p, long long k) {
  if (dt == kFloat16) return ld(static_cast<const __half*>(p)[k]);
  if (dt == kBFloat16) return ld(static_cast<const __nv_bfloat16*>(p)[k]);
  return static_cast<const float*>(p)[k];
}

// The launch of cuda.cu on the host: thread_partial per (block, thread), then block_sum_f64's
// fixed tree per block and grad_dot_final's (one block of 512 threads) over the partials.
static double tree(std::vector<double> s) {
  for (size_t w = s.size() / 2; w > 0; w >>= 1)
    for (size_t i = 0; i < w; ++i) s[i] += s[i + w];
  return s[0];
}
static double run(const Table& t, std::vector<long long>* block_units) {
  const int64_t total = t.unit_start[t.num_tensors];
  const int64_t nb = blocks_for(total);
  std::vector<double> partials;
  for (int64_t b = 0; b < nb; ++b) {
    std::vector<double> s(kThreads);
    for (int tid = 0; tid < kThreads; ++tid) s[tid] = thread_partial(t, b, nb, tid, kThreads);
    partials.push_back(tree(s));
    if (block_units) block_units->push_back(unit_begin(b + 1, nb, total) - unit_begin(b, nb, total));
  }
  std::vector<double> f(512, 0.0);
  for (size_t i = 0; i < partials.size(); ++i) f[i % 512] += partials[i];
  return tree(f);
}

int main() {
  const int n = int(sizeof(kSizes) / sizeof(kSizes[0]));
  int fails = 0;
  for (int ones = 1; ones >= 0; --ones) {
    for (int delta = 0; delta <= 1; ++delta) {
      Table t{};
      t.num_tensors = n;
      int64_t u = 0;
      long double want = 0, abs_sum = 0;
      long long count = 0;
      std::vector<Buf> bufs;
      for (int i = 0; i < n; ++i) {
        const bool shift = i == kMisaligned;
        Buf x = make_any(kDtypes[i], kSizes[i], ones, shift), y = make_any(kDtypes[i], kSizes[i], ones, shift);
        Buf z = make_any(kDtypes[i], kSizes[i], false, shift);
        bufs.push_back(x); bufs.push_back(y); bufs.push_back(z);
        t.x[i] = x.p; t.y[i] = y.p; t.z[i] = delta ? z.p : nullptr;
        t.n[i] = kSizes[i];
        t.dtype[i] = uint8_t(kDtypes[i]);
        t.vec_ok[i] = !shift;
        t.unit_start[i] = u;
        u += num_units(kSizes[i]);
        for (long long k = 0; k < kSizes[i]; ++k) {
          const double yk = value(kDtypes[i], y.p, k) - (delta ? value(kDtypes[i], z.p, k) : 0.0);
          const long double p = (long double)value(kDtypes[i], x.p, k) * yk;
          want += p; abs_sum += fabsl(p);
        }
        count += kSizes[i];
      }
      for (int k = n; k <= kMaxTensors; ++k) t.unit_start[k] = u;
      std::vector<long long> units;
      const double got = run(t, &units);
      if (ones && !delta && got != double(count)) {
        std::printf("FAIL coverage: sum of ones %.17g != %lld elements\n", got, count); ++fails;
      }
      if (std::fabs(got - double(want)) > 5e-6 * double(abs_sum) + 1e-30) {
        std::printf("FAIL ones=%d delta=%d: %.17g vs %.17Lg (sum|xy| %.3Lg)\n", ones, delta, got, want, abs_sum); ++fails;
      }
      long long lo = units[0], hi = units[0];
      for (long long v : units) { lo = v < lo ? v : lo; hi = v > hi ? v : hi; }
      if (hi - lo > 1) { std::printf("FAIL split: blocks take %lld..%lld units\n", lo, hi); ++fails; }
      if (ones && !delta) std::printf("blocks %zu units %lld..%lld\n", units.size(), lo, hi);
      if (run(t, nullptr) != got) { std::printf("FAIL not reproducible\n"); ++fails; }
      for (Buf& b : bufs) std::free(b.base);
    }
  }
  if (fails == 0) std::printf("OK\n");
  return fails;
}
"""


def _grad_dot_host_run(tmp_path, sizes, dtypes, misaligned=-1):
    text = (GRAD_DOT_PROGRAM.replace("SIZES", ", ".join(map(str, sizes)))
            .replace("DTYPES", ", ".join(map(str, dtypes))).replace("MISALIGNED", str(misaligned)))
    src = tmp_path / "grad_dot.cu"
    src.write_text(text)
    exe = tmp_path / "grad_dot"
    subprocess.run([NVCC, *FLAGS, str(src), "-o", str(exe)], check=True, capture_output=True, timeout=300)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout[-3000:] + res.stderr
    return res.stdout


def test_grad_dot_kernel_arithmetic_on_the_host(tmp_path):
    """The CUDA grad_dot's per-thread work (csrc/grad_dot/partials.cuh) run on the host over a
    ragged, mixed-dtype list with a misaligned tensor: every element counted exactly once (a
    list of ones sums to its length), dot and delta within 5e-6 of sum |xy|, bitwise
    reproducible, and the blocks' unit counts differ by at most one."""
    sizes = [12, 0, 100_003, 7, 64 * 32 * 9, 1, 0, 40_000, 16, 17, 4099]
    dtypes = [0, 1, 2, 0, 1, 2, 0, 0, 2, 1, 0]
    _grad_dot_host_run(tmp_path, sizes, dtypes, misaligned=7)


@pytest.mark.slow
def test_grad_dot_splits_resnet50_evenly(tmp_path):
    """ResNet-50's 161 parameter tensors (25.6 M elements): 1024 blocks, each with the same
    number of 16-element units (+-1). The old split gave 643 blocks two 16k-element chunks and
    381 blocks one."""
    import mplfast

    sizes = [p.numel() for p in mplfast.create_model("resnet50", 1000).parameters()]
    out = _grad_dot_host_run(tmp_path, sizes, [0] * len(sizes))
    blocks, lo, hi = re.search(r"blocks (\d+) units (\d+)\.\.(\d+)", out).groups()
    assert int(blocks) == 1024 and int(hi) - int(lo) <= 1, out
