/* The relative-position-bias MLP of ksmodel/model/_rpb_kernel.py, fused (fp32, CPU).
 *
 * One hidden R x R layer, one output unit per offset group, R = 32: the original study's
 * configuration and the default one. Per (slice, query row y, query column x, key n) element:
 *   h1 = relu(fy[s,y,n] w1y + fx[s,x,n] w1x + b1),  h2 = relu(W2 h1 + b2),  bias = u . h2
 * The eager kernel runs this as a dozen full passes over [rows, R] buffers per chunk (products,
 * bias + ReLU, the ReLUs' backward, sums); here a block of NB elements goes through the whole
 * forward or backward in registers and L1, so only the products' arithmetic is left. The forward
 * also keeps which hidden units were active, 32 bits per element (as many bytes as the bias),
 * so the backward needs no second pass through the hidden layer's product: it runs the two
 * products of the gradients only. Vectors are GCC's generic vector extension (64 bytes):
 * AVX-512 where the CPU has it, two AVX2 halves elsewhere. Built and loaded by _rpb_native.py.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define R 32
#define NB 8
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t m16 __attribute__((vector_size(64)));

static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 splat(float x) {  /* one broadcast ((v16){0} + x would add 0.0 first) */
    return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
static inline v16 keep(v16 v, m16 mask) { return (v16)((m16)v & mask); }
static inline v16 relu(v16 v) { return keep(v, v > (v16){0}); }

/* Bit i (i < 32) set where unit i is active: lanes of a0, then of a1. */
static inline uint32_t active_bits(v16 a0, v16 a1) {
#ifdef __AVX512F__
    const __m512 z = _mm512_setzero_ps();
    return (uint32_t)_mm512_cmp_ps_mask((__m512)a0, z, _CMP_GT_OQ) |
           (uint32_t)_mm512_cmp_ps_mask((__m512)a1, z, _CMP_GT_OQ) << 16;
#else
    uint32_t bits = 0;
    for (int i = 0; i < 16; i++) bits |= (uint32_t)(a0[i] > 0) << i | (uint32_t)(a1[i] > 0) << (i + 16);
    return bits;
#endif
}

/* v where the 16 low bits of ``bits`` are set, else 0. */
static inline v16 where_bits(v16 v, uint32_t bits) {
#ifdef __AVX512F__
    return (v16)_mm512_maskz_mov_ps((__mmask16)bits, (__m512)v);
#else
    const m16 lane = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    return keep(v, (((m16){0} + (int32_t)(bits & 0xffff)) & lane) != (m16){0});
#endif
}
static inline float hsum(v16 v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

/* The lane sums of t[0..7] into o[0..7]: a shuffle tree, 3 vector operations per row instead
 * of a 16-lane sum each. */
static inline void hsum8(const v16 t[8], float *o, int nb) {
    const m16 lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const m16 hi8 = lo8 + 8;
    const m16 lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const m16 hi4 = lo4 + 4;
    const m16 lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const m16 hi2 = lo2 + 2;
    const m16 ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const m16 od = ev + 1;
    v16 a[4], b[2];
    for (int i = 0; i < 4; i++)  /* lanes 0-7: row 2i, 8-15: row 2i + 1 */
        a[i] = __builtin_shuffle(t[2 * i], t[2 * i + 1], lo8) +
               __builtin_shuffle(t[2 * i], t[2 * i + 1], hi8);
    for (int i = 0; i < 2; i++)  /* 4 lanes per row */
        b[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo4) +
               __builtin_shuffle(a[2 * i], a[2 * i + 1], hi4);
    const v16 c = __builtin_shuffle(b[0], b[1], lo2) + __builtin_shuffle(b[0], b[1], hi2);
    const v16 d = __builtin_shuffle(c, c, ev) + __builtin_shuffle(c, c, od);  /* lanes 0-7 */
    for (int r = 0; r < nb; r++) o[r] = d[r];
}

/* The first layer's two separable parts of one slice: cols[x,n,:] = fx w1x + b1 and
 * rows[y,n,:] = fy w1y. */
static void first_layer(const float *fx, const float *fy, int64_t H, int64_t W, int64_t N,
                        const float *w1x, const float *w1y, const float *b1, float *cols,
                        float *rows) {
    const v16 ax0 = ld(w1x), ax1 = ld(w1x + 16), ay0 = ld(w1y), ay1 = ld(w1y + 16);
    const v16 c0 = ld(b1), c1 = ld(b1 + 16);
    for (int64_t i = 0; i < W * N; i++) {
        const v16 f = splat(fx[i]);
        st(cols + i * R, f * ax0 + c0);
        st(cols + i * R + 16, f * ax1 + c1);
    }
    for (int64_t i = 0; i < H * N; i++) {
        const v16 f = splat(fy[i]);
        st(rows + i * R, f * ay0);
        st(rows + i * R + 16, f * ay1);
    }
}

/* h1 of up to NB keys (rows rr, columns cc) into h[NB][R]; rows past nb are zero. */
static inline void h1_block(const float *rr, const float *cc, int nb, float *h) {
    for (int i = 0; i < nb * 2; i++) st(h + i * 16, relu(ld(rr + i * 16) + ld(cc + i * 16)));
    for (int i = nb * 2; i < NB * 2; i++) st(h + i * 16, (v16){0});
}

/* acc[r] = bias + sum_k x[r][k] M[k]: the [NB, R] x [R, R] product, M row-major [k][j]. */
static inline void product(const float *x, const float *M, const float *bias, v16 acc[NB][2]) {
    const v16 b0 = bias ? ld(bias) : (v16){0}, b1 = bias ? ld(bias + 16) : (v16){0};
    for (int r = 0; r < NB; r++) {
        acc[r][0] = b0;
        acc[r][1] = b1;
    }
    for (int k = 0; k < R; k++) {
        const v16 m0 = ld(M + k * R), m1 = ld(M + k * R + 16);
#pragma GCC unroll 8
        for (int r = 0; r < NB; r++) {
            const v16 xv = splat(x[r * R + k]);
            acc[r][0] += xv * m0;
            acc[r][1] += xv * m1;
        }
    }
}

/* Bias of slices [s0, s1): out [S, H, W, N], and the hidden layer's active units into active
 * [S, H, W, N] (skipped when NULL: no backward to come). w2t = W2 transposed ([k][j]); scratch
 * holds (H + W) * N * R floats. */
void ks_rpb_forward(const float *fx, const float *fy, int64_t H, int64_t W, int64_t N,
                    const float *w1x, const float *w1y, const float *b1, const float *w2t,
                    const float *b2, const float *u, int64_t s0, int64_t s1, float *out,
                    uint32_t *active, float *scratch) {
    float *cols = scratch, *rows = scratch + W * N * R;
    float h[NB * R] __attribute__((aligned(64)));
    v16 acc[NB][2];
    const v16 u0 = ld(u), u1 = ld(u + 16);
    for (int64_t s = s0; s < s1; s++) {
        first_layer(fx + s * W * N, fy + s * H * N, H, W, N, w1x, w1y, b1, cols, rows);
        for (int64_t y = 0; y < H; y++) {
            for (int64_t x = 0; x < W; x++) {
                float *o = out + ((s * H + y) * W + x) * N;
                for (int64_t n0 = 0; n0 < N; n0 += NB) {
                    const int nb = N - n0 < NB ? (int)(N - n0) : NB;
                    h1_block(rows + (y * N + n0) * R, cols + (x * N + n0) * R, nb, h);
                    product(h, w2t, b2, acc);
                    v16 t[NB];
                    for (int r = 0; r < NB; r++) t[r] = relu(acc[r][0]) * u0 +
                                                        relu(acc[r][1]) * u1;
                    hsum8(t, o + n0, nb);
                    if (active) {
                        uint32_t *a = active + ((s * H + y) * W + x) * N + n0;
                        for (int r = 0; r < nb; r++) a[r] = active_bits(acc[r][0], acc[r][1]);
                    }
                }
            }
        }
    }
}

/* Gradients of slices [s0, s1) from g [S, H, W, N] (the bias's gradient) and the forward's
 * active units. Written: dfx, dfy
 * (their slices; skipped when NULL). Added to sums [R*R + 4R]: C = sum P^T h1 (P = g where h2
 * is active), c = sum P, dw1x, dw1y, db1 - the caller turns C and c into W2's, b2's and u's
 * gradients (u folds into wu = u[:, None] * W2, row-major [j][k]). scratch holds
 * 2 (H + W) * N * R floats. */
void ks_rpb_backward(const float *fx, const float *fy, int64_t H, int64_t W, int64_t N,
                     const float *w1x, const float *w1y, const float *b1, const float *wu,
                     const float *g, const uint32_t *active, int64_t s0, int64_t s1,
                     float *dfx, float *dfy, float *sums, float *scratch) {
    float *cols = scratch, *rows = cols + W * N * R;
    float *dcol = rows + H * N * R, *drow = dcol + W * N * R;
    float *C = sums, *cb = sums + R * R, *dw1x = cb + R, *dw1y = dw1x + R, *db1 = dw1y + R;
    float h[NB * R] __attribute__((aligned(64))), p[NB * R] __attribute__((aligned(64)));
    v16 acc[NB][2], hv[NB][2];
    for (int64_t s = s0; s < s1; s++) {
        first_layer(fx + s * W * N, fy + s * H * N, H, W, N, w1x, w1y, b1, cols, rows);
        memset(dcol, 0, sizeof(float) * (size_t)((W + H) * N * R));  /* dcol and drow */
        for (int64_t y = 0; y < H; y++) {
            for (int64_t x = 0; x < W; x++) {
                const float *gg = g + ((s * H + y) * W + x) * N;
                const uint32_t *aa = active + ((s * H + y) * W + x) * N;
                for (int64_t n0 = 0; n0 < N; n0 += NB) {
                    const int nb = N - n0 < NB ? (int)(N - n0) : NB;
                    h1_block(rows + (y * N + n0) * R, cols + (x * N + n0) * R, nb, h);
                    /* P = g where the hidden layer was active (zero past nb) */
                    for (int r = 0; r < NB; r++) {
                        const uint32_t bits = r < nb ? aa[n0 + r] : 0;
                        const v16 gv = splat(r < nb ? gg[n0 + r] : 0.0f);
                        st(p + r * R, where_bits(gv, bits));
                        st(p + r * R + 16, where_bits(gv, bits >> 16));
                        hv[r][0] = ld(h + r * R);
                        hv[r][1] = ld(h + r * R + 16);
                    }
                    /* C[j] += sum_r P[r][j] h1[r], four rows j at a time (eight independent
                     * sums: one row's two would wait on each product's latency); c += sum P */
                    for (int j = 0; j < R; j += 4) {
                        v16 c[4][2];
                        for (int i = 0; i < 4; i++) {
                            c[i][0] = ld(C + (j + i) * R);
                            c[i][1] = ld(C + (j + i) * R + 16);
                        }
#pragma GCC unroll 8
                        for (int r = 0; r < NB; r++) {
#pragma GCC unroll 4
                            for (int i = 0; i < 4; i++) {
                                const v16 pv = splat(p[r * R + j + i]);
                                c[i][0] += pv * hv[r][0];
                                c[i][1] += pv * hv[r][1];
                            }
                        }
                        for (int i = 0; i < 4; i++) {
                            st(C + (j + i) * R, c[i][0]);
                            st(C + (j + i) * R + 16, c[i][1]);
                        }
                    }
                    v16 q0 = ld(cb), q1 = ld(cb + 16);
                    for (int r = 0; r < nb; r++) {
                        q0 += ld(p + r * R);
                        q1 += ld(p + r * R + 16);
                    }
                    st(cb, q0);
                    st(cb + 16, q1);
                    /* dh1 = P wu, through the first layer's ReLU (h1 read again: 16 registers
                     * for it next to the product's 16 would spill), summed per row and column */
                    product(p, wu, 0, acc);
                    for (int r = 0; r < nb; r++) {
                        const v16 d0 = keep(acc[r][0], ld(h + r * R) > (v16){0});
                        const v16 d1 = keep(acc[r][1], ld(h + r * R + 16) > (v16){0});
                        float *dr = drow + (y * N + n0 + r) * R, *dc = dcol + (x * N + n0 + r) * R;
                        st(dr, ld(dr) + d0);
                        st(dr + 16, ld(dr + 16) + d1);
                        st(dc, ld(dc) + d0);
                        st(dc + 16, ld(dc + 16) + d1);
                    }
                }
            }
        }
        /* the first layer's weights and inputs from the per-row and per-column sums */
        const float *fxs = fx + s * W * N, *fys = fy + s * H * N;
        const v16 ax0 = ld(w1x), ax1 = ld(w1x + 16), ay0 = ld(w1y), ay1 = ld(w1y + 16);
        v16 gx0 = ld(dw1x), gx1 = ld(dw1x + 16), gb0 = ld(db1), gb1 = ld(db1 + 16);
        for (int64_t i = 0; i < W * N; i++) {
            const v16 d0 = ld(dcol + i * R), d1 = ld(dcol + i * R + 16);
            if (dfx) dfx[s * W * N + i] = hsum(d0 * ax0 + d1 * ax1);
            gx0 += d0 * fxs[i];
            gx1 += d1 * fxs[i];
            gb0 += d0;
            gb1 += d1;
        }
        st(dw1x, gx0);
        st(dw1x + 16, gx1);
        st(db1, gb0);
        st(db1 + 16, gb1);
        v16 gy0 = ld(dw1y), gy1 = ld(dw1y + 16);
        for (int64_t i = 0; i < H * N; i++) {
            const v16 d0 = ld(drow + i * R), d1 = ld(drow + i * R + 16);
            if (dfy) dfy[s * H * N + i] = hsum(d0 * ay0 + d1 * ay1);
            gy0 += d0 * fys[i];
            gy1 += d1 * fys[i];
        }
        st(dw1y, gy0);
        st(dw1y + 16, gy1);
    }
}
