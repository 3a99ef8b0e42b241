// C++ tests of the CPU kernels (run by ctest; the Python suite compares every op with the PyTorch
// reference). Each check prints what failed; the exit status is the number of failures. The kernels take
// torch::stable::Tensor (LibTorch stable ABI); the test builds its inputs and expectations with ATen and
// hands the kernels stable views of the same tensors (the library is built for the stable ABI alone; this
// test executable is not shipped, so it may use the full C++ API).
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <cstdio>
#include <string>

#include "covkernels/cpu_ops.h"
#include "covkernels/philox.h"

using covkernels::Counters;
using covkernels::PhiloxWords;
using covkernels::philox4x32_10;
using covkernels::uint_to_uniform;

namespace {

// A stable handle sharing at::Tensor `t`'s storage (what the kernels write, the at::Tensor sees), and back.
covkernels::Tensor stable(const at::Tensor& t) {
  return covkernels::Tensor(torch::aot_inductor::new_tensor_handle(at::Tensor(t)));
}
at::Tensor aten(const covkernels::Tensor& t) { return *torch::aot_inductor::tensor_handle_to_tensor_pointer(t.get()); }

void philox_normal_out(const at::Tensor& out, Counters ctr, int64_t stream) {
  auto o = stable(out);
  covkernels::philox_normal_out(o, ctr, stream);
}
void block_dct2_out(const at::Tensor& x, const at::Tensor& out, int64_t block, bool inverse) {
  auto o = stable(out);
  covkernels::block_dct2_out(stable(x), o, block, inverse);
}
void probe_tangent_out(const at::Tensor& out, Counters ctr, int64_t stream, int64_t block) {
  auto o = stable(out);
  covkernels::probe_tangent_out(o, ctr, stream, block);
}
void structured_step_out(const at::Tensor& d, const at::Tensor& x, const at::Tensor& jv, const at::Tensor& out,
                         Counters ctr, const covkernels::StepParams& p) {
  auto o = stable(out);
  covkernels::structured_step_out(stable(d), stable(x), stable(jv), o, ctr, p);
}
std::tuple<at::Tensor, at::Tensor> lanczos_update(const at::Tensor& aq, const at::Tensor& basis, int64_t j, bool reorth,
                                                  double tol, double tiny) {
  auto b = stable(basis);
  auto [h, beta] = covkernels::lanczos_update(stable(aq), b, j, reorth, tol, tiny);
  return {aten(h), aten(beta)};
}
void lanczos_synthesis_out(const at::Tensor& d, const at::Tensor& x, const at::Tensor& basis, const at::Tensor& coef,
                           const at::Tensor& out, double ratio) {
  auto o = stable(out);
  covkernels::lanczos_synthesis_out(stable(d), stable(x), stable(basis), stable(coef), o, ratio);
}

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  failures += ok ? 0 : 1;
}

bool close(const at::Tensor& a, const at::Tensor& b, double tol) {
  return a.sizes() == b.sizes() && (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() <= tol;
}

at::Tensor poisoned_like(const at::Tensor& t) { return at::full_like(t, std::numeric_limits<double>::quiet_NaN()); }

void philox_known_answers() {
  // Known-answer vectors of Philox4x32-10 (Salmon et al., Random123 distribution).
  const PhiloxWords a = philox4x32_10(0, 0, 0, 0, 0);
  check(a.w0 == 0x6627e8d5u && a.w1 == 0xe169c58du && a.w2 == 0xbc57ac4cu && a.w3 == 0x9b00dbd8u, "philox KAT zeros");
  const PhiloxWords b = philox4x32_10(~0u, ~0u, ~0u, ~0u, ~0ull);
  check(b.w0 == 0x408f276du && b.w1 == 0x41c83b0eu && b.w2 == 0xa20bc7c6u && b.w3 == 0x6d5451fdu, "philox KAT ones");
  const PhiloxWords c = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u,
                                      (uint64_t{0x299f31d0u} << 32) | 0xa4093822u);
  check(c.w0 == 0xd16cfe09u && c.w1 == 0x94fdccebu && c.w2 == 0x5001e420u && c.w3 == 0x24126ea1u, "philox KAT pi");
  check(uint_to_uniform(0u) == 0.0f && uint_to_uniform(~0u) == 0.0f && uint_to_uniform(0x7fffffffu) < 1.0f,
        "uniform transform stays in [0, 1)");
}

void normal_stream() {
  at::Tensor big = poisoned_like(at::empty({4, 250000}));
  philox_normal_out(big, {123, 0, 5}, 1);
  check(std::abs(big.mean().item<double>()) < 0.01 && std::abs(big.var().item<double>() - 1.0) < 0.01,
        "normal stream has mean 0 and variance 1");
  at::Tensor one = poisoned_like(at::empty({1, 250000}));
  philox_normal_out(one, {123, 2, 5}, 1);
  check(at::equal(one[0], big[2]), "a sample's noise does not depend on the batch (sample_offset)");
  at::Tensor dbl = poisoned_like(at::empty({4, 250000}, at::kDouble));
  philox_normal_out(dbl, {123, 0, 5}, 1);
  check(at::equal(dbl.to(at::kFloat), big), "float64 output holds the float32 stream");
}

void block_dct(at::ScalarType dtype, double tol) {
  const at::Tensor x = at::randn({2, 3, 24, 48}, at::TensorOptions().dtype(dtype));
  for (int64_t k : {1, 3, 4, 8}) {
    at::Tensor c = poisoned_like(x), back = poisoned_like(x);
    block_dct2_out(x, c, k, false);
    block_dct2_out(c, back, k, true);
    check(close(back, x, tol), "block " + std::to_string(k) + " DCT inverts (" + std::string(c10::toString(dtype)) + ")");
    check(std::abs(c.pow(2).sum().item<double>() - x.pow(2).sum().item<double>()) < tol * 1e3 * x.numel(),
          "block " + std::to_string(k) + " DCT is orthonormal (energy kept)");
  }
  at::Tensor flat = at::full({1, 1, 8, 8}, 2.0, at::TensorOptions().dtype(dtype)), c = poisoned_like(flat);
  block_dct2_out(flat, c, 8, false);
  at::Tensor expect = at::zeros_like(flat);
  expect.index_put_({0, 0, 0, 0}, 16.0);  // DC coefficient of a constant block: K * value
  check(close(c, expect, tol * 10), "constant block has only the DC coefficient");
}

void structured_step_scaled_identity() {
  // J = a I: every coefficient estimate equals a, so x_s = m + sqrt(var0 + scale2 a) F^T xi.
  const double a = 0.3, var0 = 0.25, scale2 = 1.44, ratio = 0.5;
  const Counters ctr{77, 3, 2};
  for (int64_t k : {1, 8}) {
    at::Tensor v = poisoned_like(at::empty({2, 3, 16, 16}, at::kDouble));
    probe_tangent_out(v, ctr, 16, k);
    const at::Tensor jv = (a * v).unsqueeze(0).contiguous();
    const at::Tensor d = at::randn_like(v), x = at::randn_like(v);
    at::Tensor out = poisoned_like(v);
    structured_step_out(d, x, jv, out, ctr, {ratio, var0, scale2, 1.0, k, true, 1, 16, false});
    at::Tensor xi = poisoned_like(v), noise = poisoned_like(v);
    philox_normal_out(xi, ctr, 1);
    block_dct2_out(xi, noise, k, true);
    const at::Tensor expect = d + ratio * (x - d) + std::sqrt(var0 + scale2 * a) * noise;
    check(close(out, expect, 1e-12), "structured step with J = a I, block " + std::to_string(k));
  }
}

void lanczos() {
  const at::Tensor diag = at::linspace(0.1, 1.0, 200, at::kDouble);
  at::Tensor basis = at::zeros({3, 2, 200}, at::kDouble);
  basis[0].copy_(at::randn({2, 200}, at::kDouble));
  basis[0].div_(basis[0].norm(2, {1}, true));
  const at::Tensor aq = (basis[0] * diag).contiguous();
  auto [h, beta] = lanczos_update(aq, basis, 0, true, 1e-12, 1e-300);
  const at::Tensor alpha = (basis[0] * aq).sum(1);
  const at::Tensor w = aq - alpha.unsqueeze(1) * basis[0];
  check(close(h.squeeze(1), alpha, 1e-12) && close(beta, w.norm(2, {1}), 1e-12), "lanczos alpha and beta");
  check(close((basis[1] * basis[0]).sum(1), at::zeros({2}, at::kDouble), 1e-12) &&
            close(basis[1].norm(2, {1}), at::ones({2}, at::kDouble), 1e-12),
        "q2 is a unit vector orthogonal to q1");
  at::Tensor inv = at::zeros({2, 2, 50}, at::kDouble);
  inv[0].copy_(at::ones({2, 50}, at::kDouble) / std::sqrt(50.0));
  auto [h2, beta2] = lanczos_update((2.0 * inv[0]).contiguous(), inv, 0, true, 1e-12, 1e-300);
  check(beta2.abs().max().item<double>() == 0.0 && inv[1].abs().max().item<double>() == 0.0,
        "an invariant Krylov space gives beta = 0 and q = 0");
  const at::Tensor d = at::randn({2, 200}, at::kDouble), x = at::randn({2, 200}, at::kDouble);
  const at::Tensor coef = at::randn({2, 2}, at::kDouble);
  at::Tensor out = poisoned_like(d);
  lanczos_synthesis_out(d, x, basis, coef, out, 0.25);
  const at::Tensor expect = d + 0.25 * (x - d) + coef.select(1, 0).unsqueeze(1) * basis[0] +
                            coef.select(1, 1).unsqueeze(1) * basis[1];
  check(close(out, expect, 1e-12), "lanczos synthesis");
}

}  // namespace

int main() {
  at::manual_seed(0);
  philox_known_answers();
  normal_stream();
  block_dct(at::kFloat, 1e-5);
  block_dct(at::kDouble, 1e-12);
  structured_step_scaled_identity();
  lanczos();
  std::printf("%d failure(s)\n", failures);
  return failures;
}
