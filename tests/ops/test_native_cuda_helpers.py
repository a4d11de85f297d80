"""Host-side checks of csrc/common/cuda.cuh's element helpers, without a GPU.

The helpers that decide how a logit is loaded (``ld``, ``ld_logit``) are ``__host__ __device__``:
this test compiles a tiny host program against the header with nvcc and the extension's own CUDA
flags and runs it, and compiles the same helper into a kernel for sm_90 to check its PTX. It
skips when nvcc is missing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

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
