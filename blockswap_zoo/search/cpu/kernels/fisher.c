/* One block's Fisher potential from its activation a and gradient g, in one sweep, for exact-mode
 * scoring on CPUs: 0.5 * sum_c mean_n (sum_hw a * g)^2 (BlockSwap's definition, see proxies.py).
 *
 * Tensors are float32 in channels_last layout: N images of HW rows of C contiguous channels.
 * PyTorch computes it as a * g (a whole new tensor), a sum over h and w, then the rest: three
 * sweeps. Here each image is one task (a thread sums it alone, so the result does not depend on
 * the thread count), products and sums are in double, and nothing of the activation's size is
 * written. Compiled and loaded by native_kernels.py.
 */
#include <stdint.h>
#include <stdlib.h>

/* Writes the value to *out. Returns 0, or -1 when out of memory. */
int fisher_term(const float *a, const float *g, int64_t N, int64_t HW, int64_t C, double *out) {
    double *d = malloc((size_t)N * (size_t)C * sizeof(double));
    if (!d) return -1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t n = 0; n < N; n++) {
        double *dn = d + n * C;
        for (int64_t c = 0; c < C; c++) dn[c] = 0.0;
        const float *an = a + n * HW * C, *gn = g + n * HW * C;
        for (int64_t r = 0; r < HW; r++) {
            const float *ar = an + r * C, *gr = gn + r * C;
            for (int64_t c = 0; c < C; c++) dn[c] += (double)ar[c] * (double)gr[c];
        }
    }
    double total = 0.0;
    for (int64_t c = 0; c < C; c++) {
        double s = 0.0;
        for (int64_t n = 0; n < N; n++) s += d[n * C + c] * d[n * C + c];
        total += s / (double)N;
    }
    free(d);
    *out = 0.5 * total;
    return 0;
}
