/* Training-mode batch norm followed by ReLU, forward and backward, fused, for exact-mode scoring on CPUs.
 *
 * Unfused, they sweep over each activation six times forward (two-pass statistics, normalise,
 * ReLU) and three times backward (ReLU, two batch-norm passes); here twice each way. Tensors are
 * float32 in channels_last layout: M = N*H*W rows of C contiguous channels. Statistics and
 * gradient sums accumulate in double, so they are closer to float64 than PyTorch's fp32 sums.
 * Built with -ffp-contract=off: the backward pass recomputes the ReLU mask with the forward pass's
 * exact expression, so both must round the same way. Compiled and loaded by native_kernels.py.
 *
 * A residual add before the batch norm fuses in too: given a second input b, the forward pass
 * normalises x = a + b and writes x (its statistics pass adds, stores and sums in one sweep), and
 * the backward pass adds the gradient that x gets downstream (from the next residual add) to its
 * own. Both are the single fp32 additions that PyTorch's add and autograd's accumulation make.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_count(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* The pre-activation value: the same expression, so the same rounding, in every pass. */
static inline float normalised(float x, float mean, float scale, float shift) { return (x - mean) * scale + shift; }

/* g where the ReLU passed (z > 0), else +0: a bit mask, so that the loops vectorise (a NaN g is
 * dropped where the ReLU blocked it, as PyTorch's threshold_backward does). */
static inline float relu_grad(float g, float z) {
    uint32_t bits;
    memcpy(&bits, &g, sizeof bits);
    bits &= -(uint32_t)(z > 0.f);
    memcpy(&g, &bits, sizeof g);
    return g;
}

/* Per-channel sums over rows, split into one contiguous row range per thread and added in thread
 * order (deterministic for a given thread count). mode 0: s1 = sum x, s2 = sum x^2.
 * mode 1: g = gy where the ReLU passed, s1 = sum g, s2 = sum g * (x - mean).
 * mode 2: as mode 0 for x = a + b, written to sum (x is a, gy is b). Returns 0, or -1 when out of
 * memory. */
static int channel_sums(int mode, const float *gy, const float *x, int64_t M, int64_t C, const float *mean,
                        const float *scale, const float *shift, double *s1, double *s2, float *sum) {
    int nt = thread_count();
    double *part = calloc((size_t)nt * 2 * (size_t)C, sizeof(double));
    int failed = 0;
    if (!part) return -1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : failed)
#endif
    {
        int t = thread_index();
        int64_t r0 = M * t / nt, r1 = M * (t + 1) / nt;
        double *a1 = calloc((size_t)2 * (size_t)C, sizeof(double)); /* thread-local: no false sharing */
        if (!a1) {
            failed = 1;
        } else {
            double *a2 = a1 + C;
            for (int64_t r = r0; r < r1; r++) {
                const float *xr = x + r * C;
                if (mode == 0) {
                    for (int64_t c = 0; c < C; c++) {
                        double v = xr[c];
                        a1[c] += v;
                        a2[c] += v * v;
                    }
                } else if (mode == 2) {
                    const float *br = gy + r * C;
                    float *sr = sum + r * C;
                    for (int64_t c = 0; c < C; c++) {
                        float f = xr[c] + br[c];
                        double v = f;
                        sr[c] = f;
                        a1[c] += v;
                        a2[c] += v * v;
                    }
                } else {
                    const float *gr = gy + r * C;
                    for (int64_t c = 0; c < C; c++) {
                        float g = relu_grad(gr[c], normalised(xr[c], mean[c], scale[c], shift[c]));
                        a1[c] += g;
                        a2[c] += (double)g * (double)(xr[c] - mean[c]);
                    }
                }
            }
            memcpy(part + (size_t)t * 2 * (size_t)C, a1, (size_t)2 * (size_t)C * sizeof(double));
            free(a1);
        }
    }
    if (!failed) {
        memset(s1, 0, (size_t)C * sizeof(double));
        memset(s2, 0, (size_t)C * sizeof(double));
        for (int t = 0; t < nt; t++) {
            const double *p = part + (size_t)t * 2 * (size_t)C;
            for (int64_t c = 0; c < C; c++) {
                s1[c] += p[c];
                s2[c] += p[C + c];
            }
        }
    }
    free(part);
    return failed ? -1 : 0;
}

/* y = relu((x - mean) * invstd * weight + bias) with the batch's mean and biased variance.
 * Writes mean, var (biased), invstd and scale = weight * invstd per channel for the backward pass.
 * With b (not NULL), x is a + b, written to sum; otherwise x is a and sum is not used. */
int bn_relu_forward(const float *a, const float *b, int64_t M, int64_t C, const float *weight, const float *bias,
                    double eps, float *sum, float *y, float *mean, float *var, float *invstd, float *scale) {
    double *s = malloc((size_t)2 * (size_t)C * sizeof(double));
    if (!s || M < 1 || channel_sums(b ? 2 : 0, b, a, M, C, NULL, NULL, NULL, s, s + C, sum) != 0) {
        free(s);
        return -1;
    }
    const float *x = b ? sum : a;
    for (int64_t c = 0; c < C; c++) {
        double m = s[c] / (double)M;
        double v = s[C + c] / (double)M - m * m;
        double is = 1.0 / sqrt((v > 0.0 ? v : 0.0) + eps);
        mean[c] = (float)m;
        var[c] = (float)(v > 0.0 ? v : 0.0);
        invstd[c] = (float)is;
        scale[c] = (float)((double)weight[c] * is);
    }
    free(s);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t r = 0; r < M; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        for (int64_t c = 0; c < C; c++) {
            float z = normalised(xr[c], mean[c], scale[c], bias[c]);
            yr[c] = z > 0.f ? z : 0.f;
        }
    }
    return 0;
}

/* Gradients from gy = dL/dy: grad_weight and grad_bias always, grad_x when grad_x is not NULL, plus
 * gx (dL/dx from x's other uses) when gx is not NULL. mean, invstd and scale are the forward pass's
 * outputs. */
int bn_relu_backward(const float *gy, const float *gx, const float *x, int64_t M, int64_t C, const float *bias,
                     const float *mean, const float *invstd, const float *scale, float *grad_x, float *grad_weight,
                     float *grad_bias) {
    double *s = malloc((size_t)2 * (size_t)C * sizeof(double));
    float *k = malloc((size_t)2 * (size_t)C * sizeof(float));
    if (!s || !k || M < 1 || channel_sums(1, gy, x, M, C, mean, scale, bias, s, s + C, NULL) != 0) {
        free(s);
        free(k);
        return -1;
    }
    for (int64_t c = 0; c < C; c++) {
        double is = invstd[c];
        grad_bias[c] = (float)s[c];
        grad_weight[c] = (float)(s[C + c] * is);
        k[c] = (float)((double)scale[c] * s[c] / (double)M);                 /* scale * mean of g */
        k[C + c] = (float)((double)scale[c] * is * is * s[C + c] / (double)M); /* per unit of (x - mean) */
    }
    free(s);
    if (grad_x) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (int64_t r = 0; r < M; r++) {
            const float *xr = x + r * C, *gr = gy + r * C;
            float *o = grad_x + r * C;
            if (gx) {
                const float *dr = gx + r * C;
                for (int64_t c = 0; c < C; c++) {
                    float g = relu_grad(gr[c], normalised(xr[c], mean[c], scale[c], bias[c]));
                    o[c] = dr[c] + (scale[c] * g - k[c] - k[C + c] * (xr[c] - mean[c]));
                }
            } else {
                for (int64_t c = 0; c < C; c++) {
                    float g = relu_grad(gr[c], normalised(xr[c], mean[c], scale[c], bias[c]));
                    o[c] = scale[c] * g - k[c] - k[C + c] * (xr[c] - mean[c]);
                }
            }
        }
    }
    free(k);
    return 0;
}
