// Native CPU kernels of the fused Lipschitz scan (see lipschitz_rnn/models/_native.py).
//
// Row-major batches: h is (B, H), u (T, B, H) the projected inputs. Euler step t:
//     Z   = h_{t-1} [A^T | W^T]                 one (b, H) x (H, 2H) GEMM
//     s_t = tanh(Z[:, H:] + u_t)
//     h_t = h_{t-1} + eps (Z[:, :H] + s_t)
// the plain loop's order of operations (stacked_step). The batch is split into row blocks, one
// per thread, and every thread runs the whole time loop on its rows with single-threaded BLAS:
// rows of a batch never interact, so the threads need no synchronisation per step.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#if defined(LRNN_LIBMVEC) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

#include <dlfcn.h>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
__m512 _ZGVeN16v_tanhf(__m512);
__m512d _ZGVeN8v_tanh(__m512d);
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
__m256 _ZGVdN8v_tanhf(__m256);
__m256d _ZGVdN4v_tanh(__m256d);
#endif
}

namespace {

// MKL_Set_Num_Threads_Local (MKL's C name; the lowercase symbol is the Fortran one, which takes
// a pointer) from the BLAS inside torch, looked up at run time: absent from other BLAS builds,
// where the kernels leave the BLAS's threading alone.
using set_threads_t = int (*)(int);
set_threads_t mkl_set_threads_local() {
  static const set_threads_t fn = [] {
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* f = lib != nullptr ? dlsym(lib, "MKL_Set_Num_Threads_Local") : nullptr;
    if (f == nullptr) f = dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local");
    return reinterpret_cast<set_threads_t>(f);
  }();
  return fn;
}

// column-major BLAS on row-major operands: C (rows x n, ld ldc) = X (rows x k, ld ldx) Y (k x n,
// ld ldy) + beta C  is  C^T = Y^T X^T  in column-major terms.
inline void gemm_rows(int rows, int n, int k, const float* X, int ldx, const float* Y, int ldy,
                      float beta, float* C, int ldc) {
  const char N = 'N';
  const float one = 1.0f;
  sgemm_(&N, &N, &n, &rows, &k, &one, Y, &ldy, X, &ldx, &beta, C, &ldc);
}
inline void gemm_rows(int rows, int n, int k, const double* X, int ldx, const double* Y, int ldy,
                      double beta, double* C, int ldc) {
  const char N = 'N';
  const double one = 1.0;
  dgemm_(&N, &N, &n, &rows, &k, &one, Y, &ldy, X, &ldx, &beta, C, &ldc);
}

// tanh in place: glibc's vector math library (libmvec, <= 4 ulp) where built with it.
inline void tanh_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _ZGVeN16v_tanhf(_mm512_loadu_ps(x + i)));
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _ZGVdN8v_tanhf(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::tanh(x[i]);
}
inline void tanh_inplace(double* x, int64_t n) {
  int64_t i = 0;
#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(x + i, _ZGVeN8v_tanh(_mm512_loadu_pd(x + i)));
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, _ZGVdN4v_tanh(_mm256_loadu_pd(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::tanh(x[i]);
}

// Row blocks [r0, r1) of the batch, one per worker; at least min_rows rows each.
std::vector<int64_t> row_blocks(int64_t B, int64_t min_rows) {
  int64_t n = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / min_rows));
  std::vector<int64_t> edges(n + 1);
  for (int64_t i = 0; i <= n; ++i) edges[i] = (B * i) / n;
  return edges;
}

// Runs fn(r0, r1) for every row block, the blocks in parallel with one BLAS thread each.
template <typename F>
void for_row_blocks(int64_t B, int64_t min_rows, const F& fn) {
  auto edges = row_blocks(B, min_rows);
  int64_t n = static_cast<int64_t>(edges.size()) - 1;
  if (n == 1) {  // one block: let BLAS use its own threads
    fn(edges[0], edges[1]);
    return;
  }
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    set_threads_t set_threads = mkl_set_threads_local();
    int prev = set_threads != nullptr ? set_threads(1) : 0;
    for (int64_t i = begin; i < end; ++i) fn(edges[i], edges[i + 1]);
    if (set_threads != nullptr) set_threads(prev);
  });
}

template <typename scalar_t>
void euler_forward_rows(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                        const scalar_t* u, const scalar_t* h0, const scalar_t* AWt, scalar_t eps,
                        scalar_t* hs, scalar_t* S) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> Z(b * 2 * H);
  const scalar_t* hp = h0 + r0 * H;
  for (int64_t t = 0; t < T; ++t) {
    gemm_rows(b, 2 * H, H, hp, H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);
    scalar_t* ht = hs + (t * B + r0) * H;
    const scalar_t* ut = u + (t * B + r0) * H;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* zw = Z.data() + i * 2 * H + H;
      for (int64_t j = 0; j < H; ++j) zw[j] += ut[i * H + j];
      tanh_inplace(zw, H);
      const scalar_t* za = zw - H;
      for (int64_t j = 0; j < H; ++j) ht[i * H + j] = hp[i * H + j] + eps * (za[j] + zw[j]);
      if (S != nullptr) std::copy(zw, zw + H, S + (t * B + r0 + i) * H);
    }
    hp = ht;
  }
}

// Backward of euler_forward with the scaled adjoint e_t = eps dL/dh_t:
//     e_t = eps G_t + c_t,  q_t = e_t (1 - s_t^2),  c_{t-1} = e_t + [e_t | q_t] [eps A; eps W]
// EQ[t] = [e_t | q_t] (T, B, 2H) is returned for the weight gradients (one large GEMM outside)
// and q_t = dL/du_t; dh0 = c_{-1} / eps.
template <typename scalar_t>
void euler_backward_rows(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                         const scalar_t* G, const scalar_t* S, const scalar_t* M, scalar_t eps,
                         scalar_t* EQ, scalar_t* dh0) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> C(b * H, scalar_t(0));
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* Gt = G + (t * B + r0) * H;
    const scalar_t* St = S + (t * B + r0) * H;
    scalar_t* EQt = EQ + (t * B + r0) * 2 * H;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* e = EQt + i * 2 * H;
      scalar_t* q = e + H;
      scalar_t* c = C.data() + i * H;
      const scalar_t* g = Gt + i * H;
      const scalar_t* s = St + i * H;
      for (int64_t j = 0; j < H; ++j) {
        scalar_t ej = eps * g[j] + c[j];
        e[j] = ej;
        q[j] = ej * (scalar_t(1) - s[j] * s[j]);
        c[j] = ej;
      }
    }
    gemm_rows(b, H, 2 * H, EQt, 2 * H, M, H, scalar_t(1), C.data(), H);
  }
  for (int64_t i = 0; i < b * H; ++i) dh0[r0 * H + i] = C[i] / eps;
}

// Two-stage schemes: y = h + a f(h);  rk2 h' = h + b f(y) (b = eps), heun h' = h + b (f(h) + f(y))
// (b = eps/2), each f(z) = z A^T + tanh(z W^T + u) in the plain loop's order. Saves s1, y, s2.
template <typename scalar_t>
void two_stage_forward_rows(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                            const scalar_t* u, const scalar_t* h0, const scalar_t* AWt,
                            scalar_t a, scalar_t bcoef, bool heun, scalar_t* hs, scalar_t* S1,
                            scalar_t* Y, scalar_t* S2) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> Z(b * 2 * H), F1(b * H), Yb(b * H);
  const scalar_t* hp = h0 + r0 * H;
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* ut = u + (t * B + r0) * H;
    scalar_t* ht = hs + (t * B + r0) * H;
    // stage 1 at h
    gemm_rows(b, 2 * H, H, hp, H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* zw = Z.data() + i * 2 * H + H;
      const scalar_t* za = zw - H;
      for (int64_t j = 0; j < H; ++j) zw[j] += ut[i * H + j];
      tanh_inplace(zw, H);
      scalar_t* f1 = F1.data() + i * H;
      scalar_t* y = Yb.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        f1[j] = za[j] + zw[j];
        y[j] = hp[i * H + j] + a * f1[j];
      }
      if (S1 != nullptr) {
        std::copy(zw, zw + H, S1 + (t * B + r0 + i) * H);
        std::copy(y, y + H, Y + (t * B + r0 + i) * H);
      }
    }
    // stage 2 at y
    gemm_rows(b, 2 * H, H, Yb.data(), H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* zw = Z.data() + i * 2 * H + H;
      const scalar_t* za = zw - H;
      for (int64_t j = 0; j < H; ++j) zw[j] += ut[i * H + j];
      tanh_inplace(zw, H);
      const scalar_t* f1 = F1.data() + i * H;
      if (heun) {
        for (int64_t j = 0; j < H; ++j)
          ht[i * H + j] = hp[i * H + j] + bcoef * (f1[j] + (za[j] + zw[j]));
      } else {
        for (int64_t j = 0; j < H; ++j) ht[i * H + j] = hp[i * H + j] + bcoef * (za[j] + zw[j]);
      }
      if (S2 != nullptr) std::copy(zw, zw + H, S2 + (t * B + r0 + i) * H);
    }
    hp = ht;
  }
}

// Backward of the two-stage map y = h + a f(h); h' = c_h h + c_y y + b f(y), adjoints scaled:
//     e2 = b G_t + carry,                          q2 = e2 (1 - s2^2)
//     e1 = (a c_y / b) e2 + [e2 | q2] [a A; a W],  q1 = e1 (1 - s1^2)
//     carry' = c_h e2 + (b / a) e1 + [e1 | q1] [b A; b W]
// EQ1[t] = [e1 | q1], EQ2[t] = [e2 | q2] (T, B, 2H); du = q1 + q2; dh0 = carry_{-1} / b.
template <typename scalar_t>
void two_stage_backward_rows(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                             const scalar_t* G, const scalar_t* S1, const scalar_t* S2,
                             const scalar_t* M2, const scalar_t* M1, scalar_t bcoef,
                             scalar_t beta2, scalar_t c_h, scalar_t r, scalar_t* EQ1,
                             scalar_t* EQ2, scalar_t* du, scalar_t* dh0) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> C(b * H, scalar_t(0)), E1(b * H);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = (t * B + r0) * H;
    scalar_t* EQ2t = EQ2 + 2 * off;
    scalar_t* EQ1t = EQ1 + 2 * off;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* e2 = EQ2t + i * 2 * H;
      scalar_t* q2 = e2 + H;
      scalar_t* e1 = E1.data() + i * H;
      const scalar_t* g = G + off + i * H;
      const scalar_t* s2 = S2 + off + i * H;
      const scalar_t* c = C.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        scalar_t ej = bcoef * g[j] + c[j];
        e2[j] = ej;
        q2[j] = ej * (scalar_t(1) - s2[j] * s2[j]);
        e1[j] = beta2 * ej;
      }
    }
    gemm_rows(b, H, 2 * H, EQ2t, 2 * H, M2, H, scalar_t(1), E1.data(), H);
    for (int64_t i = 0; i < b; ++i) {
      const scalar_t* e1 = E1.data() + i * H;
      scalar_t* eq1 = EQ1t + i * 2 * H;
      const scalar_t* e2 = EQ2t + i * 2 * H;
      const scalar_t* q2 = e2 + H;
      const scalar_t* s1 = S1 + off + i * H;
      scalar_t* dui = du + off + i * H;
      scalar_t* c = C.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        scalar_t q1 = e1[j] * (scalar_t(1) - s1[j] * s1[j]);
        eq1[j] = e1[j];
        eq1[H + j] = q1;
        dui[j] = q1 + q2[j];
        c[j] = c_h * e2[j] + r * e1[j];
      }
    }
    gemm_rows(b, H, 2 * H, EQ1t, 2 * H, M1, H, scalar_t(1), C.data(), H);
  }
  for (int64_t i = 0; i < b * H; ++i) dh0[r0 * H + i] = C[i] / bcoef;
}

void check(const torch::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.dim() == dim, name, " must have ", dim, " dimensions, got ", x.dim());
}

}  // namespace

// hs (T, B, H) and, if save, the tanh values S (T, B, H) (else an empty tensor).
std::vector<torch::Tensor> euler_forward(torch::Tensor u, torch::Tensor h0, torch::Tensor AWt,
                                         double eps, bool save) {
  check(u, "u", 3);
  check(h0, "h0", 2);
  check(AWt, "AWt", 2);
  const int64_t T = u.size(0), B = u.size(1), H = u.size(2);
  TORCH_CHECK(h0.size(0) == B && h0.size(1) == H && AWt.size(0) == H && AWt.size(1) == 2 * H,
              "shapes do not match");
  auto hs = torch::empty_like(u);
  auto S = save ? torch::empty_like(u) : torch::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "euler_forward", [&] {
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    const scalar_t* awp = AWt.data_ptr<scalar_t>();
    scalar_t* hsp = hs.data_ptr<scalar_t>();
    scalar_t* sp = save ? S.data_ptr<scalar_t>() : nullptr;
    for_row_blocks(B, 8, [&](int64_t r0, int64_t r1) {
      euler_forward_rows<scalar_t>(r0, r1, T, B, H, up, h0p, awp, static_cast<scalar_t>(eps),
                                   hsp, sp);
    });
  });
  return {hs, S};
}

// EQ (T, B, 2H) = [e_t | q_t] and dh0 (B, H); see euler_backward_rows.
std::vector<torch::Tensor> euler_backward(torch::Tensor G, torch::Tensor S, torch::Tensor M,
                                          double eps) {
  check(G, "G", 3);
  check(S, "S", 3);
  check(M, "M", 2);
  const int64_t T = G.size(0), B = G.size(1), H = G.size(2);
  TORCH_CHECK(S.sizes() == G.sizes() && M.size(0) == 2 * H && M.size(1) == H,
              "shapes do not match");
  auto EQ = torch::empty({T, B, 2 * H}, G.options());
  auto dh0 = torch::empty({B, H}, G.options());
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "euler_backward", [&] {
    const scalar_t* gp = G.data_ptr<scalar_t>();
    const scalar_t* sp = S.data_ptr<scalar_t>();
    const scalar_t* mp = M.data_ptr<scalar_t>();
    scalar_t* eqp = EQ.data_ptr<scalar_t>();
    scalar_t* dhp = dh0.data_ptr<scalar_t>();
    for_row_blocks(B, 8, [&](int64_t r0, int64_t r1) {
      euler_backward_rows<scalar_t>(r0, r1, T, B, H, gp, sp, mp, static_cast<scalar_t>(eps), eqp,
                                    dhp);
    });
  });
  return {EQ, dh0};
}

std::vector<torch::Tensor> two_stage_forward(torch::Tensor u, torch::Tensor h0, torch::Tensor AWt,
                                             double a, double b, bool heun, bool save) {
  check(u, "u", 3);
  check(h0, "h0", 2);
  check(AWt, "AWt", 2);
  const int64_t T = u.size(0), B = u.size(1), H = u.size(2);
  TORCH_CHECK(h0.size(0) == B && h0.size(1) == H && AWt.size(0) == H && AWt.size(1) == 2 * H,
              "shapes do not match");
  auto hs = torch::empty_like(u);
  std::vector<torch::Tensor> out{hs};
  if (save)
    for (int k = 0; k < 3; ++k) out.push_back(torch::empty_like(u));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "two_stage_forward", [&] {
    scalar_t* S1 = save ? out[1].data_ptr<scalar_t>() : nullptr;
    scalar_t* Y = save ? out[2].data_ptr<scalar_t>() : nullptr;
    scalar_t* S2 = save ? out[3].data_ptr<scalar_t>() : nullptr;
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    const scalar_t* awp = AWt.data_ptr<scalar_t>();
    scalar_t* hsp = hs.data_ptr<scalar_t>();
    for_row_blocks(B, 8, [&](int64_t r0, int64_t r1) {
      two_stage_forward_rows<scalar_t>(r0, r1, T, B, H, up, h0p, awp, static_cast<scalar_t>(a),
                                       static_cast<scalar_t>(b), heun, hsp, S1, Y, S2);
    });
  });
  return out;
}

// EQ1, EQ2 (T, B, 2H), du (T, B, H), dh0 (B, H); see two_stage_backward_rows.
std::vector<torch::Tensor> two_stage_backward(torch::Tensor G, torch::Tensor S1, torch::Tensor S2,
                                              torch::Tensor M2, torch::Tensor M1, double b,
                                              double beta2, double c_h, double r) {
  check(G, "G", 3);
  check(S1, "S1", 3);
  check(S2, "S2", 3);
  check(M2, "M2", 2);
  check(M1, "M1", 2);
  const int64_t T = G.size(0), B = G.size(1), H = G.size(2);
  TORCH_CHECK(S1.sizes() == G.sizes() && S2.sizes() == G.sizes() && M1.size(0) == 2 * H &&
                  M1.size(1) == H && M2.sizes() == M1.sizes(),
              "shapes do not match");
  auto EQ1 = torch::empty({T, B, 2 * H}, G.options());
  auto EQ2 = torch::empty({T, B, 2 * H}, G.options());
  auto du = torch::empty_like(G);
  auto dh0 = torch::empty({B, H}, G.options());
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "two_stage_backward", [&] {
    const scalar_t *gp = G.data_ptr<scalar_t>(), *s1 = S1.data_ptr<scalar_t>(),
                   *s2 = S2.data_ptr<scalar_t>(), *m2 = M2.data_ptr<scalar_t>(),
                   *m1 = M1.data_ptr<scalar_t>();
    scalar_t *eq1 = EQ1.data_ptr<scalar_t>(), *eq2 = EQ2.data_ptr<scalar_t>(),
             *dup = du.data_ptr<scalar_t>(), *dhp = dh0.data_ptr<scalar_t>();
    for_row_blocks(B, 8, [&](int64_t r0, int64_t r1) {
      two_stage_backward_rows<scalar_t>(
          r0, r1, T, B, H, gp, s1, s2, m2, m1, static_cast<scalar_t>(b),
          static_cast<scalar_t>(beta2), static_cast<scalar_t>(c_h), static_cast<scalar_t>(r), eq1,
          eq2, dup, dhp);
    });
  });
  return {EQ1, EQ2, du, dh0};
}

// Which optional pieces this build uses (for logs and benchmark records).
std::string build_info() {
  std::string info = mkl_set_threads_local() != nullptr ? "mkl sgemm/dgemm, 1 thread per block"
                                                        : "blas sgemm/dgemm";
#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
  info += ", libmvec avx512 tanh";
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
  info += ", libmvec avx2 tanh";
#else
  info += ", scalar tanh";
#endif
  return info;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &build_info, "optional pieces this build uses");
  m.def("euler_forward", &euler_forward, "Euler forward of the Lipschitz scan");
  m.def("euler_backward", &euler_backward, "Euler backward of the Lipschitz scan");
  m.def("two_stage_forward", &two_stage_forward, "rk2/heun forward of the Lipschitz scan");
  m.def("two_stage_backward", &two_stage_backward, "rk2/heun backward of the Lipschitz scan");
}
