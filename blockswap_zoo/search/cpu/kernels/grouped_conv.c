/* 3x3 grouped convolution with 4 input and 4 output channels per group, for exact-mode scoring on CPUs.
 *
 * oneDNN runs such convolutions (BlockSwap's G(N/4)-style blocks, and 2-channel groups merged to 4 by
 * MergedGroupConv2d) at a fifth of its dense FLOP rate (`python benchmarks/profile_search_scoring.py
 * --conv-table`). Here each 8-lane vector holds two groups: every tap multiplies the input vector by
 * four weight vectors into four accumulators, one per output channel of the group, and a horizontal
 * add per output pixel sums each group's four input channels. Tensors are float32, channels_last
 * (N, H, W, C), padding 1; stride 1 or 2. The backward pass for the input (stride 1) is the same
 * convolution with the weights flipped and transposed within each group (cpu_layers.py).
 * Needs AVX2 and FMA; grouped_conv_supported() says whether this build has them.
 */
#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GROUPED_CONV_SIMD 1
#endif

int grouped_conv_supported(void) {
#ifdef GROUPED_CONV_SIMD
    return 1;
#else
    return 0;
#endif
}

/* y[n, oh, ow, 4g+j] = sum over taps t and i < 4 of x[n, oh*stride+kh-1, ow*stride+kw-1, 4g+i] * weight[4g+j, i, t]
 * with w laid out as [t][j][c]: w[(t*4 + j)*C + c] = weight[4*(c/4) + j, c%4, t]. Returns -1 when this
 * build or C (a multiple of 8) does not fit. */
int grouped_conv4_forward(const float *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t stride,
                          const float *w, float *y, int64_t OH, int64_t OW) {
#ifdef GROUPED_CONV_SIMD
    if (C % 8 != 0 || C <= 0) return -1;
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(static)
#endif
    for (int64_t n = 0; n < N; n++) {
        for (int64_t oh = 0; oh < OH; oh++) {
            for (int64_t ow = 0; ow < OW; ow++) {
                float *yp = y + ((n * OH + oh) * OW + ow) * C;
                for (int64_t c0 = 0; c0 < C; c0 += 8) {
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int kh = 0; kh < 3; kh++) {
                        int64_t ih = oh * stride + kh - 1;
                        if (ih < 0 || ih >= H) continue;
                        for (int kw = 0; kw < 3; kw++) {
                            int64_t iw = ow * stride + kw - 1;
                            if (iw < 0 || iw >= W) continue;
                            __m256 v = _mm256_loadu_ps(x + ((n * H + ih) * W + iw) * C + c0);
                            const float *wt = w + (kh * 3 + kw) * 4 * C + c0;
                            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt), a0);
                            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + C), a1);
                            a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 2 * C), a2);
                            a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 3 * C), a3);
                        }
                    }
                    /* within each 4-lane group: [sum a0, sum a1, sum a2, sum a3] = output channels j = 0..3 */
                    _mm256_storeu_ps(yp + c0, _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)));
                }
            }
        }
    }
    return 0;
#else
    (void)x, (void)N, (void)H, (void)W, (void)C, (void)stride, (void)w, (void)y, (void)OH, (void)OW;
    return -1;
#endif
}
