// Native CPU kernels of the fused Lipschitz scan (loaded by lipschitz_rnn/models/_native.py).
//
// Plain C ABI, no torch headers: the library builds in about two seconds with the system compiler
// and is called through ctypes with the data pointers of contiguous tensors that the caller
// allocated. The batch is split into blocks of rows, each processed for the whole sequence;
// the blocks run on OpenMP threads (rows of a batch never interact, so the threads need no
// synchronisation per step). Matrix products go to the sgemm_/dgemm_ of the BLAS inside
// torch (MKL on x86-64), found with dlsym by lrnn_init; tanh comes from glibc's vector math
// library (libmvec) where the build enables it.
//
// Row-major batches: h is (B, H), u (T, B, H) the projected inputs x U^T + b. One stage
//     Z = h [A^T | W^T]                   one (b, H) x (H, 2H) product
//     f = Z[:, :H] + tanh(Z[:, H:] + u_t)
// euler h_t = h + eps f(h); rk2 y = h + (eps/2) f(h), h_t = h + eps f(y); heun y = h + eps f(h),
// h_t = h + (eps/2) (f(h) + f(y)): the plain loop's order of operations (stacked_step).
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(LRNN_LIBMVEC) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
extern "C" __m512 _ZGVeN16v_tanhf(__m512);
extern "C" __m512d _ZGVeN8v_tanh(__m512d);
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
extern "C" __m256 _ZGVdN8v_tanhf(__m256);
extern "C" __m256d _ZGVdN4v_tanh(__m256d);
#endif

namespace {

using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const float*, const float*, const int*, const float*, const int*,
                         const float*, float*, const int*);
using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);
using set_threads_t = int (*)(int);  // MKL_Set_Num_Threads_Local (MKL's C name)

sgemm_t g_sgemm = nullptr;
dgemm_t g_dgemm = nullptr;
set_threads_t g_set_threads = nullptr;
char g_info[160] = "not initialised";

// column-major BLAS on row-major operands: C (rows x n, ld ldc) = X (rows x k, ld ldx) Y (k x n,
// ld ldy) + beta C  is  C^T = Y^T X^T  in column-major terms.
inline void gemm_rows(int rows, int n, int k, const float* X, int ldx, const float* Y, int ldy,
                      float beta, float* C, int ldc) {
  const char N = 'N';
  const float one = 1.0f;
  g_sgemm(&N, &N, &n, &rows, &k, &one, Y, &ldy, X, &ldx, &beta, C, &ldc);
}
inline void gemm_rows(int rows, int n, int k, const double* X, int ldx, const double* Y, int ldy,
                      double beta, double* C, int ldc) {
  const char N = 'N';
  const double one = 1.0;
  g_dgemm(&N, &N, &n, &rows, &k, &one, Y, &ldy, X, &ldx, &beta, C, &ldc);
}

// C (n x m, row-major) += X^T Y for row-major X (rows x n, ld ldx) and Y (rows x m, ld ldy):
// the weight-gradient sum over a block of rows (column-major: C^T = Y^T X, i.e. N x T).
inline void gemm_tn_acc(int rows, int n, int m, const float* X, int ldx, const float* Y, int ldy,
                        float* C) {
  const char N = 'N', Tr = 'T';
  const float one = 1.0f;
  g_sgemm(&N, &Tr, &m, &n, &rows, &one, Y, &ldy, X, &ldx, &one, C, &m);
}
inline void gemm_tn_acc(int rows, int n, int m, const double* X, int ldx, const double* Y,
                        int ldy, double* C) {
  const char N = 'N', Tr = 'T';
  const double one = 1.0;
  g_dgemm(&N, &Tr, &m, &n, &rows, &one, Y, &ldy, X, &ldx, &one, C, &m);
}

// Steps per weight-gradient block: about 512 KiB of [e | q] rows (stays in L2 for the GEMM).
inline int64_t wgrad_block_steps(int64_t b, int64_t H, int64_t T, size_t itemsize) {
  const int64_t per_step = std::max<int64_t>(1, b * 2 * H * static_cast<int64_t>(itemsize));
  return std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 19) / per_step));
}

// tanh in place: libmvec's vector tanh (<= 4 ulp) where built with it, else std::tanh.
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

// Pins the calling thread's BLAS to `threads` threads for the life of the object (0: leave it).
class BlasThreads {
 public:
  explicit BlasThreads(int threads) {
    if (threads > 0 && g_set_threads != nullptr) {
      prev_ = g_set_threads(threads);
      active_ = true;
    }
  }
  ~BlasThreads() {
    if (active_) g_set_threads(prev_);
  }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  int prev_ = 0;
  bool active_ = false;
};

// fn(r0, r1, block index) over nblocks row blocks of a batch of B. Several blocks run in an
// OpenMP parallel region (the OpenMP runtime already loaded by torch: libgomp.so.1 is shared by
// soname, so its threads are torch's intra-op threads and nothing else spins on the cores
// meanwhile), each with its BLAS pinned to one thread. One block leaves the BLAS its threads.
template <typename F>
void for_blocks(int64_t B, int nblocks, const F& fn) {
  if (nblocks <= 1) {
    fn(0, B, 0);
    return;
  }
#pragma omp parallel for num_threads(nblocks) schedule(static, 1)
  for (int i = 0; i < nblocks; ++i) {
    BlasThreads pin(1);
    fn(B * i / nblocks, B * (i + 1) / nblocks, i);
  }
}

// One stage's element-wise part for one row: zw <- tanh(zw + u) in place; the caller combines
// Z[:, :H] and zw.
template <typename scalar_t>
inline void stage_tanh(scalar_t* zw, const scalar_t* u, int64_t H) {
  for (int64_t j = 0; j < H; ++j) zw[j] += u[j];
  tanh_inplace(zw, H);
}

template <typename scalar_t>
void euler_forward(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H, const scalar_t* u,
                   const scalar_t* h0, const scalar_t* AWt, scalar_t eps, scalar_t* hs,
                   scalar_t* S) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> Z(b * 2 * H);
  const scalar_t* hp = h0 + r0 * H;
  for (int64_t t = 0; t < T; ++t) {
    gemm_rows(b, 2 * H, H, hp, H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);
    const int64_t off = (t * B + r0) * H;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* za = Z.data() + i * 2 * H;
      scalar_t* zw = za + H;
      stage_tanh(zw, u + off + i * H, H);
      const scalar_t* h = hp + i * H;
      scalar_t* out = hs + off + i * H;
      for (int64_t j = 0; j < H; ++j) out[j] = h[j] + eps * (za[j] + zw[j]);
      if (S != nullptr) std::memcpy(S + off + i * H, zw, H * sizeof(scalar_t));
    }
    hp = hs + off;
  }
}

// Backward of euler_forward with the scaled adjoint e_t = eps dL/dh_t:
//     e_t = eps G_t + c_t,  q_t = e_t (1 - s_t^2),  c_{t-1} = e_t + [e_t | q_t] [eps A; eps W]
// Runs steps T-1..0 of a sequence (or of one block of it: hs and h0 then point at the block's
// states and the state entering it) starting from the carry c_{T-1} (carry_in; null: zero) and
// returns c_{-1} in carry_out (dL/dh0 = c_{-1} / eps at the sequence's start).
// du_t = q_t; and, if dAW is not null, [dA; dW] = sum_t [e_t | q_t]^T h_{t-1}
// accumulated into dAW (2H x H) by one GEMM per block of steps from the block's rows of
// [e | q] and h_{t-1}, copied into small contiguous buffers (nothing of size T is stored).
template <typename scalar_t>
void euler_backward(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H, const scalar_t* G,
                    const scalar_t* S, const scalar_t* M, scalar_t eps, const scalar_t* hs,
                    const scalar_t* h0, const scalar_t* carry_in, scalar_t* du,
                    scalar_t* carry_out, scalar_t* dAW) {
  const int64_t b = r1 - r0;
  const int64_t k = wgrad_block_steps(b, H, T, sizeof(scalar_t));
  std::vector<scalar_t> C(b * H, scalar_t(0)), EQ(k * b * 2 * H), HP(dAW ? k * b * H : 0);
  if (carry_in != nullptr) std::memcpy(C.data(), carry_in + r0 * H, b * H * sizeof(scalar_t));
  int64_t slot = 0;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = (t * B + r0) * H;
    scalar_t* EQt = EQ.data() + slot * b * 2 * H;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* e = EQt + i * 2 * H;
      scalar_t* q = e + H;
      scalar_t* c = C.data() + i * H;
      const scalar_t* g = G + off + i * H;
      const scalar_t* s = S + off + i * H;
      scalar_t* dui = du + off + i * H;
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t ej = eps * g[j] + c[j];
        const scalar_t qj = ej * (scalar_t(1) - s[j] * s[j]);
        e[j] = ej;
        q[j] = qj;
        dui[j] = qj;
        c[j] = ej;
      }
    }
    gemm_rows(b, H, 2 * H, EQt, 2 * H, M, H, scalar_t(1), C.data(), H);
    if (dAW != nullptr) {
      const scalar_t* hprev = t > 0 ? hs + ((t - 1) * B + r0) * H : h0 + r0 * H;
      std::memcpy(HP.data() + slot * b * H, hprev, b * H * sizeof(scalar_t));
    }
    if (++slot == k || t == 0) {
      if (dAW != nullptr)
        gemm_tn_acc(slot * b, 2 * H, H, EQ.data(), 2 * H, HP.data(), H, dAW);
      slot = 0;
    }
  }
  std::memcpy(carry_out + r0 * H, C.data(), b * H * sizeof(scalar_t));
}

// Two-stage schemes: y = h + a f(h); rk2 h' = h + b f(y) (b = eps), heun h' = h + b (f(h) + f(y))
// (b = eps/2). Saves s1, y, s2 when S1 is not null.
template <typename scalar_t>
void two_stage_forward(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                       const scalar_t* u, const scalar_t* h0, const scalar_t* AWt, scalar_t a,
                       scalar_t bcoef, bool heun, scalar_t* hs, scalar_t* S1, scalar_t* Y,
                       scalar_t* S2) {
  const int64_t b = r1 - r0;
  std::vector<scalar_t> Z(b * 2 * H), F1(b * H), Yb(b * H);
  const scalar_t* hp = h0 + r0 * H;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = (t * B + r0) * H;
    gemm_rows(b, 2 * H, H, hp, H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);  // stage 1 at h
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* za = Z.data() + i * 2 * H;
      scalar_t* zw = za + H;
      stage_tanh(zw, u + off + i * H, H);
      const scalar_t* h = hp + i * H;
      scalar_t* f1 = F1.data() + i * H;
      scalar_t* y = Yb.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        f1[j] = za[j] + zw[j];
        y[j] = h[j] + a * f1[j];
      }
      if (S1 != nullptr) {
        std::memcpy(S1 + off + i * H, zw, H * sizeof(scalar_t));
        std::memcpy(Y + off + i * H, y, H * sizeof(scalar_t));
      }
    }
    gemm_rows(b, 2 * H, H, Yb.data(), H, AWt, 2 * H, scalar_t(0), Z.data(), 2 * H);  // at y
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* za = Z.data() + i * 2 * H;
      scalar_t* zw = za + H;
      stage_tanh(zw, u + off + i * H, H);
      const scalar_t* h = hp + i * H;
      const scalar_t* f1 = F1.data() + i * H;
      scalar_t* out = hs + off + i * H;
      if (heun) {
        for (int64_t j = 0; j < H; ++j) out[j] = h[j] + bcoef * (f1[j] + (za[j] + zw[j]));
      } else {
        for (int64_t j = 0; j < H; ++j) out[j] = h[j] + bcoef * (za[j] + zw[j]);
      }
      if (S2 != nullptr) std::memcpy(S2 + off + i * H, zw, H * sizeof(scalar_t));
    }
    hp = hs + off;
  }
}

// Backward of the two-stage map y = h + a f(h); h' = c_h h + c_y y + b f(y), adjoints scaled:
//     e2 = b G_t + carry,                          q2 = e2 (1 - s2^2)
//     e1 = (a c_y / b) e2 + [e2 | q2] [a A; a W],  q1 = e1 (1 - s1^2)
//     carry' = c_h e2 + (b / a) e1 + [e1 | q1] [b A; b W]
// Carries in and out as euler_backward (dL/dh0 = carry_{-1} / b). du = q1 + q2; and, if dAW is
// not null,
// [dA; dW] = sum_t [e2 | q2]^T y_t + [e1 | q1]^T h_{t-1}, one GEMM per block of steps (the two
// stages' rows interleaved in the block buffers).
template <typename scalar_t>
void two_stage_backward(int64_t r0, int64_t r1, int64_t T, int64_t B, int64_t H,
                        const scalar_t* G, const scalar_t* S1, const scalar_t* S2,
                        const scalar_t* Y, const scalar_t* M2, const scalar_t* M1, scalar_t bcoef,
                        scalar_t beta2, scalar_t c_h, scalar_t r, const scalar_t* hs,
                        const scalar_t* h0, const scalar_t* carry_in, scalar_t* du,
                        scalar_t* carry_out, scalar_t* dAW) {
  const int64_t b = r1 - r0;
  const int64_t k = std::max<int64_t>(1, wgrad_block_steps(b, H, T, sizeof(scalar_t)) / 2);
  std::vector<scalar_t> C(b * H, scalar_t(0)), EQ(2 * k * b * 2 * H), HP(dAW ? 2 * k * b * H : 0);
  if (carry_in != nullptr) std::memcpy(C.data(), carry_in + r0 * H, b * H * sizeof(scalar_t));
  int64_t slot = 0;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = (t * B + r0) * H;
    scalar_t* EQ2t = EQ.data() + (2 * slot) * b * 2 * H;
    scalar_t* EQ1t = EQ2t + b * 2 * H;
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* e2 = EQ2t + i * 2 * H;
      scalar_t* q2 = e2 + H;
      scalar_t* e1 = EQ1t + i * 2 * H;
      const scalar_t* g = G + off + i * H;
      const scalar_t* s2 = S2 + off + i * H;
      const scalar_t* c = C.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t ej = bcoef * g[j] + c[j];
        e2[j] = ej;
        q2[j] = ej * (scalar_t(1) - s2[j] * s2[j]);
        e1[j] = beta2 * ej;
      }
    }
    gemm_rows(b, H, 2 * H, EQ2t, 2 * H, M2, H, scalar_t(1), EQ1t, 2 * H);  // e1 += [e2|q2] M2
    for (int64_t i = 0; i < b; ++i) {
      scalar_t* e1 = EQ1t + i * 2 * H;
      scalar_t* q1 = e1 + H;
      const scalar_t* e2 = EQ2t + i * 2 * H;
      const scalar_t* q2 = e2 + H;
      const scalar_t* s1 = S1 + off + i * H;
      scalar_t* dui = du + off + i * H;
      scalar_t* c = C.data() + i * H;
      for (int64_t j = 0; j < H; ++j) {
        const scalar_t q1j = e1[j] * (scalar_t(1) - s1[j] * s1[j]);
        q1[j] = q1j;
        dui[j] = q1j + q2[j];
        c[j] = c_h * e2[j] + r * e1[j];
      }
    }
    gemm_rows(b, H, 2 * H, EQ1t, 2 * H, M1, H, scalar_t(1), C.data(), H);
    if (dAW != nullptr) {
      scalar_t* hp = HP.data() + (2 * slot) * b * H;
      std::memcpy(hp, Y + off, b * H * sizeof(scalar_t));  // stage 2 ran at y_t
      const scalar_t* hprev = t > 0 ? hs + ((t - 1) * B + r0) * H : h0 + r0 * H;
      std::memcpy(hp + b * H, hprev, b * H * sizeof(scalar_t));  // stage 1 at h_{t-1}
    }
    if (++slot == k || t == 0) {
      if (dAW != nullptr)
        gemm_tn_acc(2 * slot * b, 2 * H, H, EQ.data(), 2 * H, HP.data(), H, dAW);
      slot = 0;
    }
  }
  std::memcpy(carry_out + r0 * H, C.data(), b * H * sizeof(scalar_t));
}

}  // namespace

extern "C" {

// Finds the BLAS in the already loaded library `blas_lib` (torch's libtorch_cpu). Returns 0 on
// success, 1 if the library is not loaded, 2 if it has no sgemm_/dgemm_.
int lrnn_init(const char* blas_lib) {
  void* lib = dlopen(blas_lib, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return 1;
  g_sgemm = reinterpret_cast<sgemm_t>(dlsym(lib, "sgemm_"));
  g_dgemm = reinterpret_cast<dgemm_t>(dlsym(lib, "dgemm_"));
  g_set_threads = reinterpret_cast<set_threads_t>(dlsym(lib, "MKL_Set_Num_Threads_Local"));
  if (g_sgemm == nullptr || g_dgemm == nullptr) return 2;
  std::strcpy(g_info, g_set_threads != nullptr ? "mkl sgemm/dgemm" : "blas sgemm/dgemm");
#if defined(LRNN_LIBMVEC) && defined(__AVX512F__)
  std::strcat(g_info, ", libmvec avx512 tanh");
#elif defined(LRNN_LIBMVEC) && defined(__AVX2__)
  std::strcat(g_info, ", libmvec avx2 tanh");
#else
  std::strcat(g_info, ", scalar tanh");
#endif
  return 0;
}

// What the build uses (for logs and benchmark records).
const char* lrnn_info() { return g_info; }

// Whether row blocks can run in parallel: built with OpenMP, and the BLAS's threads can be
// pinned per calling thread (MKL). Otherwise callers pass nblocks = 1.
int lrnn_parallel_blocks() {
#if defined(_OPENMP)
  return g_set_threads != nullptr ? 1 : 0;
#else
  return 0;
#endif
}

#define LRNN_DEFINE(suffix, scalar_t)                                                            \
  void lrnn_euler_forward_##suffix(int64_t T, int64_t B, int64_t H, const scalar_t* u,          \
                                   const scalar_t* h0, const scalar_t* AWt, double eps,         \
                                   scalar_t* hs, scalar_t* S, int nblocks) {                    \
    for_blocks(B, nblocks, [&](int64_t r0, int64_t r1, int64_t) {                                \
      euler_forward<scalar_t>(r0, r1, T, B, H, u, h0, AWt, static_cast<scalar_t>(eps), hs, S);  \
    });                                                                                          \
  }                                                                                              \
  void lrnn_euler_backward_##suffix(int64_t T, int64_t B, int64_t H, const scalar_t* G,         \
                                    const scalar_t* S, const scalar_t* M, double eps,           \
                                    const scalar_t* hs, const scalar_t* h0,                     \
                                    const scalar_t* carry_in, scalar_t* du, scalar_t* carry_out, \
                                    scalar_t* dAW, int nblocks) {                               \
    for_blocks(B, nblocks, [&](int64_t r0, int64_t r1, int64_t i) {                              \
      scalar_t* part = dAW ? dAW + i * 2 * H * H : nullptr;                                      \
      euler_backward<scalar_t>(r0, r1, T, B, H, G, S, M, static_cast<scalar_t>(eps), hs, h0,     \
                               carry_in, du, carry_out, part);                                   \
    });                                                                                          \
  }                                                                                              \
  void lrnn_two_stage_forward_##suffix(int64_t T, int64_t B, int64_t H, const scalar_t* u,      \
                                       const scalar_t* h0, const scalar_t* AWt, double a,       \
                                       double b, int heun, scalar_t* hs, scalar_t* S1,          \
                                       scalar_t* Y, scalar_t* S2, int nblocks) {                \
    for_blocks(B, nblocks, [&](int64_t r0, int64_t r1, int64_t) {                                \
      two_stage_forward<scalar_t>(r0, r1, T, B, H, u, h0, AWt, static_cast<scalar_t>(a),        \
                                  static_cast<scalar_t>(b), heun != 0, hs, S1, Y, S2);           \
    });                                                                                          \
  }                                                                                              \
  void lrnn_two_stage_backward_##suffix(                                                         \
      int64_t T, int64_t B, int64_t H, const scalar_t* G, const scalar_t* S1, const scalar_t* S2, \
      const scalar_t* Y, const scalar_t* M2, const scalar_t* M1, double b, double beta2,         \
      double c_h, double r, const scalar_t* hs, const scalar_t* h0, const scalar_t* carry_in,    \
      scalar_t* du, scalar_t* carry_out, scalar_t* dAW, int nblocks) {                           \
    for_blocks(B, nblocks, [&](int64_t r0, int64_t r1, int64_t i) {                              \
      scalar_t* part = dAW ? dAW + i * 2 * H * H : nullptr;                                      \
      two_stage_backward<scalar_t>(r0, r1, T, B, H, G, S1, S2, Y, M2, M1,                        \
                                   static_cast<scalar_t>(b), static_cast<scalar_t>(beta2),       \
                                   static_cast<scalar_t>(c_h), static_cast<scalar_t>(r), hs, h0, \
                                   carry_in, du, carry_out, part);                               \
    });                                                                                          \
  }

LRNN_DEFINE(f32, float)
LRNN_DEFINE(f64, double)

#undef LRNN_DEFINE

}  // extern "C"
