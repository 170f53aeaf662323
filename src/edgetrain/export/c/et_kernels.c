/* edgetrain C runtime: kernels and the training driver (see et_kernels.h).
 *
 * One sample at a time, as on the device: forward through every layer, the loss head, then the
 * backward from the top down to the lowest trained layer. A dense/conv layer's backward drops
 * errors that would push a saturated output further out, picks the rows (dense) or filters (conv)
 * to update (dynamic partial updates), adds its gradient, and makes the error at its input from
 * its weights before they change. After the last sample of a step each trained layer is updated
 * (SGD in dequantized space, then re-ranged and requantized, as edgetrain.train.fqt.trainer does).
 *
 * Every buffer sits in one static arena at offsets from the Python memory planner
 * (edgetrain.cost.training_memory.training_plan, MemoryPlan.layout). Stack arrays: two of
 * ET_MAX_ROWS entries in the backward of a dense/conv layer.
 */
#include <math.h>
#include <string.h>

#include "et_model.h"

et_observer_t et_observer = 0;

#define A8(off) (et_model.arena + (off))
#define A32(off) ((int32_t *)(void *)(et_model.arena + (off)))
#define ADBL(off) ((double *)(void *)(et_model.arena + (off)))

static void observe(int event, int layer, int sample, const void *data, uint32_t nbytes)
{
    if (et_observer) et_observer(event, layer, sample, data, nbytes);
}

/* -- number formats (edgetrain.quant) ---------------------------------------------------------- */

/* quant.requantize with round_shift "nearest" (ties up) and saturation to uint8. */
uint8_t et_requant(int32_t acc, int32_t m, int32_t shift, int32_t zp)
{
    int64_t v = (m == 1) ? (int64_t)acc : (int64_t)acc * m;
    if (shift > 0)
        v = (v + ((int64_t)1 << (shift - 1))) >> shift;
    else if (shift < 0)
        v = v * ((int64_t)1 << -shift);
    v += zp;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* quant.quantize_multiplier: real = m * 2**-shift, m in [2**30, 2**31) or a power of two. */
void et_multiplier(double real, int32_t *m, int32_t *shift)
{
    int e;
    double mant = frexp(real, &e);
    if (mant == 0.5) {
        *m = 1;
        *shift = 1 - e;
        return;
    }
    int64_t mi = (int64_t)rint(mant * 2147483648.0); /* ties to even, as Python's round */
    int32_t s = 31 - e;
    if (mi == ((int64_t)1 << 31)) {
        mi /= 2;
        s -= 1;
    }
    *m = (int32_t)mi;
    *shift = s;
}

/* quant.quantize for an affine format with "nearest" rounding, saturated to [lo, hi]. */
int64_t et_quantize(double x, double scale, int32_t zp, int64_t lo, int64_t hi)
{
    double y = x / scale;
    if (y == 0.0 && x < 0.0) y = -4.9406564584124654e-324; /* quant._scaled keeps it negative */
    if (y > 1099511627776.0) y = 1099511627776.0;           /* +-2**40: beyond any 32-bit range */
    if (y < -1099511627776.0) y = -1099511627776.0;
    double r = floor(y);
    if (y - r >= 0.5) r += 1.0;
    int64_t q = (int64_t)r + zp;
    return q < lo ? lo : q > hi ? hi : q;
}

/* quant.affine_from_range for uint8 (asymmetric): [lo, hi] widened to include 0. */
void et_affine_from_range(double lo, double hi, double *scale, int32_t *zp)
{
    if (lo > 0.0) lo = 0.0;
    if (hi < 0.0) hi = 0.0;
    double s = hi > lo ? (hi - lo) / 255.0 : 1.0;
    double z = rint(0.0 - lo / s);
    *scale = s;
    *zp = (int32_t)(z < 0.0 ? 0.0 : z > 255.0 ? 255.0 : z);
}

/* et_requant with its parameters prepared once per kernel call. The usual case, a multiplier
 * m > 1 with 33 <= shift <= 62, needs only the high word of the 64-bit product: the rounding term
 * 2**(shift-1) has a zero low word, so (v + 2**(shift-1)) >> shift = (hi(v) + 2**(shift-33)) >>
 * (shift - 32) with hi(v) = floor(v / 2**32), the same floor (one SMULL, an add and a shift on the
 * M4, then USAT for the clamp); other cases call et_requant. */
typedef struct {
    int32_t m, rh, s2, zp, shift, fast;
} et_rq;

static inline et_rq et_rq_make(int32_t m, int32_t shift, int32_t zp)
{
    et_rq q;
    q.fast = m != 1 && shift >= 33 && shift <= 62;
    q.s2 = q.fast ? shift - 32 : 0;
    q.rh = q.fast ? (int32_t)1 << (q.s2 - 1) : 0;
    q.m = m, q.shift = shift, q.zp = zp;
    return q;
}

#if defined(__ARM_FEATURE_SAT) || defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

static inline uint8_t et_clamp_u8(int32_t r)
{
#if defined(__ARM_FEATURE_SAT)
    return (uint8_t)__usat(r, 8);
#else
    return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
#endif
}

static inline uint8_t et_rq_apply(const et_rq *q, uint32_t acc)
{
    if (!q->fast) return et_requant((int32_t)acc, q->m, q->shift, q->zp);
    const int32_t hi = (int32_t)(((int64_t)(int32_t)acc * q->m) >> 32); /* |hi| < 2**30: no overflow below */
    return et_clamp_u8(((hi + q->rh) >> q->s2) + q->zp);
}

/* -- dot products shared by the dense and convolution kernels ----------------------------------
 *
 * A sum of products sum (p - zp)(q - zq) is computed as sum c q - zq sum c with c = p - zp (0 in
 * a padding): the kernels gather c into a small int16 stack buffer (each c in [-255, 255]) and
 * keep q as raw uint8 bytes. Every sum is taken modulo 2**32 (uint32 arithmetic, or SMLAD, which
 * wraps), so a wrapping reference sum gives the same bits, and an exact one the same number.
 *
 * With the DSP extension (Cortex-M4/M7) one (possibly unaligned) word load fetches four uint8
 * operands, UXTB16 splits them into the halfword pairs (q0, q2) and (q1, q3), and SMLAD multiplies
 * each pair with a word of two int16 c and adds both products: 4 MACs in 2 SMLADs. For that the
 * int16 buffer is stored swizzled in groups of four, [c0 c2 c1 c3] (et_swizzle); a length that is
 * not a multiple of 4 leaves a tail in plain order. The portable path (host, Cortex-M0+) keeps the
 * plain order and computes the same sums in C. */

/* Keep GCC from turning the short zero fills of the gather loops into memset calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define ET_NO_MEMSET __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define ET_NO_MEMSET
#endif

#define ET_COL 128 /* int16 entries of a gathered operand (stack buffers of at most 2 x 256 bytes) */
#define ET_WFAN 256 /* the largest (rounded up) convolution fan-in of the gathered forward: 2 x 512 bytes */
#define ET_CONV_COL 1536 /* bytes of gathered input positions (+ 4 of slack) in the convolution forward */
#define ET_CONV_PAD 2048 /* bytes of the padded input copy in the convolution forward */
#if defined(__GNUC__)
#define ET_ALIGN8 __attribute__((aligned(8)))
#else
#define ET_ALIGN8
#endif

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>

/* UXTB16 with ROR #8: bytes 1 and 3 zero-extended into two halfwords (GCC 12's arm_acle.h has
 * no __ror, and a separate rotate would cost one more instruction per word). */
static inline int32_t et_uxtb16_odd(uint32_t v)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return (int32_t)r;
}

static inline uint32_t et_load32(const void *p) /* one LDR; the M4/M7 allow unaligned ones */
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
#endif

/* [c0 c1 c2 c3] -> [c0 c2 c1 c3] in each of the first n4 / 4 groups (DSP order; else a no-op). */
static inline void et_swizzle(int16_t *c, int n4)
{
#if defined(__ARM_FEATURE_DSP)
    for (int k = 0; k < n4; k += 4) {
        const int16_t t = c[k + 1];
        c[k + 1] = c[k + 2];
        c[k + 2] = t;
    }
#else
    (void)c;
    (void)n4;
#endif
}

/* s[i] = sum_k c[k] u_i[k] (mod 2**32), k < n: one gathered int16 vector (swizzled) against two
 * uint8 vectors. */
static inline void et_dot_1x2(const int16_t *c, const uint8_t *u0, const uint8_t *u1, int n, uint32_t s[2])
{
    int k = 0;
    uint32_t s0 = 0, s1 = 0;
#if defined(__ARM_FEATURE_DSP)
    int32_t a0 = 0, a1 = 0;
    for (; k + 4 <= n; k += 4) {
        const uint32_t p = et_load32(u0 + k), q = et_load32(u1 + k);
        const int32_t ce = (int32_t)et_load32(c + k), co = (int32_t)et_load32(c + k + 2);
        a0 = __smlad((int32_t)__uxtb16(p), ce, a0);
        a0 = __smlad(et_uxtb16_odd(p), co, a0);
        a1 = __smlad((int32_t)__uxtb16(q), ce, a1);
        a1 = __smlad(et_uxtb16_odd(q), co, a1);
    }
    s0 = (uint32_t)a0, s1 = (uint32_t)a1;
#endif
    for (; k < n; k++) {
        s0 += (uint32_t)(c[k] * u0[k]);
        s1 += (uint32_t)(c[k] * u1[k]);
    }
    s[0] = s0, s[1] = s1;
}

/* -- forward (edgetrain.model.forward.layer_forward_int) -------------------------------------- */

/* Dense: y = requant(sum (x - zx)(w - zw) + b), 32-bit accumulator that wraps. Expanded as
 * b + sum x w - zx sum w - zw sum x + n zx zw (mod 2**32, the same bits), two rows at a time: the
 * raw products need no buffer, and USADA8 adds four weight bytes in one instruction. */
ET_NOINLINE void et_dense_fwd(const uint8_t *x, int32_t zx, const uint8_t *w, int32_t zw, const int32_t *b,
                              int n_in, int n_out, int32_t m, int32_t shift, int32_t zy, uint8_t *y)
{
    uint32_t sx = 0;
    for (int k = 0; k < n_in; k++) sx += x[k];
    const uint32_t base = (uint32_t)n_in * (uint32_t)zx * (uint32_t)zw - (uint32_t)zw * sx;
    const et_rq rq = et_rq_make(m, shift, zy);
    for (int o = 0; o < n_out; o += 2) {
        const uint8_t *r0 = w + (int32_t)o * n_in, *r1 = o + 1 < n_out ? r0 + n_in : r0;
        uint32_t s0 = 0, s1 = 0, w0 = 0, w1 = 0; /* sum x w and sum w of rows o, o + 1 */
        int k = 0;
#if defined(__ARM_FEATURE_DSP)
        int32_t a0 = 0, a1 = 0;
        for (; k + 4 <= n_in; k += 4) {
            const uint32_t v = et_load32(x + k), p = et_load32(r0 + k), q = et_load32(r1 + k);
            const int32_t ve = (int32_t)__uxtb16(v), vo = et_uxtb16_odd(v);
            a0 = __smlad(ve, (int32_t)__uxtb16(p), a0);
            a0 = __smlad(vo, et_uxtb16_odd(p), a0);
            a1 = __smlad(ve, (int32_t)__uxtb16(q), a1);
            a1 = __smlad(vo, et_uxtb16_odd(q), a1);
            w0 = __usada8(p, 0, w0);
            w1 = __usada8(q, 0, w1);
        }
        s0 = (uint32_t)a0, s1 = (uint32_t)a1;
#endif
        for (; k < n_in; k++) {
            s0 += (uint32_t)x[k] * r0[k], w0 += r0[k];
            s1 += (uint32_t)x[k] * r1[k], w1 += r1[k];
        }
        y[o] = et_rq_apply(&rq, (uint32_t)b[o] + base + s0 - (uint32_t)zx * w0);
        if (o + 1 < n_out) y[o + 1] = et_rq_apply(&rq, (uint32_t)b[o + 1] + base + s1 - (uint32_t)zx * w1);
    }
}

/* -- convolution forward: gathered raw input bytes against int16 weights ------------------------ */

static inline uint32_t et_ld32(const void *p) /* 4 bytes at any alignment (one LDR on the M4/M7) */
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void et_st32(void *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

/* The input with its padding made explicit, for et_conv_fwd_gather: per channel, (in_h + 2 ph) rows of
 * wp = in_w + 2 pw bytes, the padding holding the input zero point zx (so that x - zx = 0, the real
 * value 0), then 4 zero bytes of slack for word reads; tab[ci kh + ky] = offset of row ky of channel
 * ci. Returns 0 (and does nothing) when that takes more than ET_CONV_PAD bytes. */
ET_NO_MEMSET ET_NOINLINE static int et_conv_fwd_pad(const et_layer *d, const uint8_t *x, uint8_t *xp, int16_t *tab)
{
    const int ih = d->in_h, iw = d->in_w, ph = d->ph, pw = d->pw, wp = iw + 2 * pw, hp = ih + 2 * ph;
    const int32_t n = (int32_t)d->in_c * hp * wp;
    if (n + 4 > ET_CONV_PAD) return 0;
    const uint8_t zx = (uint8_t)d->in_zp;
    uint8_t *o = xp;
    for (int ci = 0; ci < d->in_c; ci++) {
        for (int k = 0; k < ph * wp; k++) *o++ = zx;
        for (int iy = 0; iy < ih; iy++, x += iw) {
            for (int k = 0; k < pw; k++) *o++ = zx;
            for (int k = 0; k < iw; k++) *o++ = x[k];
            for (int k = 0; k < pw; k++) *o++ = zx;
        }
        for (int k = 0; k < ph * wp; k++) *o++ = zx;
        for (int ky = 0; ky < d->kh; ky++) *tab++ = (int16_t)((ci * hp + ky) * wp);
    }
    et_st32(o, 0);
    return 1;
}

/* The receptive fields of output positions p0 .. p1 - 1 as raw bytes of the padded input (et_conv_fwd_pad),
 * one row of fan4 bytes per position in the weight order [ci][ky][kx], completed with zeros (those
 * taps meet zero weights). A kernel row of at most 4 taps is copied as one word: the bytes it writes
 * past the row are overwritten by the next one (col has 4 bytes of slack). */
ET_NO_MEMSET ET_NOINLINE static void et_conv_fwd_gather(const et_layer *d, const uint8_t *xp, const int16_t *tab,
                                                    int32_t p0, int32_t p1, int fan4, uint8_t *col)
{
    const int kw = d->kw, rows = d->in_c * d->kh, fan = rows * kw, ow = d->out_w;
    const int wp = d->in_w + 2 * d->pw, step_y = d->sh * wp;
    int oy = (int)(p0 / ow), ox = (int)(p0 % ow);
    for (int32_t p = p0; p < p1; p++, col += fan4) {
        const uint8_t *base = xp + oy * step_y + ox * d->sw;
        uint8_t *c = col;
        if (kw <= 4) {
            for (int j = 0; j < rows; j++, c += kw) et_st32(c, et_ld32(base + tab[j]));
        } else {
            for (int j = 0; j < rows; j++, c += kw)
                for (int kx = 0; kx < kw; kx++) c[kx] = base[tab[j] + kx];
        }
        for (int k = fan; k < fan4; k++) col[k] = 0;
        if (++ox == ow) ox = 0, oy++;
    }
}

/* et_conv_fwd_gather for an input whose padded copy does not fit ET_CONV_PAD: the bounds are checked
 * per tap. */
ET_NO_MEMSET ET_NOINLINE static void et_conv_fwd_gather_bounds(const et_layer *d, const uint8_t *x, int32_t p0,
                                                           int32_t p1, int fan4, uint8_t *col)
{
    const int ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw, ow = d->out_w;
    const int fan = d->in_c * kh * kw;
    const uint8_t zx = (uint8_t)d->in_zp;
    int oy = (int)(p0 / ow), ox = (int)(p0 % ow);
    for (int32_t p = p0; p < p1; p++, col += fan4) {
        const int y0 = oy * d->sh - d->ph, x0 = ox * d->sw - d->pw;
        uint8_t *c = col;
        for (int ci = 0; ci < d->in_c; ci++)
            for (int ky = 0; ky < kh; ky++, c += kw) {
                const int iy = y0 + ky;
                const uint8_t *xr = x + ((int32_t)ci * ih + iy) * iw + x0;
                for (int kx = 0; kx < kw; kx++)
                    c[kx] = iy >= 0 && iy < ih && x0 + kx >= 0 && x0 + kx < iw ? xr[kx] : zx;
            }
        for (int k = fan; k < fan4; k++) col[k] = 0;
        if (++ox == ow) ox = 0, oy++;
    }
}

/* s[2 i + j] += sum_k c[j ET_WFAN + k] u_i[k] (mod 2**32), k < n (a multiple of 4): two int16 weight
 * rows (swizzled), ET_WFAN apart, against two rows of raw input bytes. On the M4/M7 the loop is
 * written in assembly: GCC 12 spills pointers inside it, and this is the hot loop of the forward
 * (4 MACs per SMLAD pair, 18 instructions for 16 MACs). */
static inline void et_dot_conv_fwd(const int16_t *c, const uint8_t *u0, const uint8_t *u1, int n, uint32_t s[4])
{
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
    int32_t a00 = (int32_t)s[0], a01 = (int32_t)s[1], a10 = (int32_t)s[2], a11 = (int32_t)s[3];
    uint32_t p, q, x, y, ce, co;
    const uint8_t *end = u0 + n;
    __asm__("1:\n\t"
            "ldr %[p], [%[u0]], #4\n\t"
            "ldr %[q], [%[u1]], #4\n\t"
            "ldrd %[ce], %[co], [%[c]], #8\n\t"
            "uxtb16 %[x], %[p]\n\t"
            "uxtb16 %[p], %[p], ror #8\n\t"
            "uxtb16 %[y], %[q]\n\t"
            "uxtb16 %[q], %[q], ror #8\n\t"
            "smlad %[a00], %[x], %[ce], %[a00]\n\t"
            "smlad %[a00], %[p], %[co], %[a00]\n\t"
            "smlad %[a10], %[y], %[ce], %[a10]\n\t"
            "smlad %[a10], %[q], %[co], %[a10]\n\t"
            "ldrd %[ce], %[co], [%[c], %[off]]\n\t"
            "smlad %[a01], %[x], %[ce], %[a01]\n\t"
            "smlad %[a01], %[p], %[co], %[a01]\n\t"
            "smlad %[a11], %[y], %[ce], %[a11]\n\t"
            "smlad %[a11], %[q], %[co], %[a11]\n\t"
            "cmp %[u0], %[end]\n\t"
            "bne 1b"
            : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11), [u0] "+&r"(u0), [u1] "+&r"(u1),
              [c] "+&r"(c), [p] "=&r"(p), [q] "=&r"(q), [x] "=&r"(x), [y] "=&r"(y), [ce] "=&r"(ce), [co] "=&r"(co)
            : [end] "r"(end), [off] "I"(2 * ET_WFAN - 8)
            : "cc", "memory");
    s[0] = (uint32_t)a00, s[1] = (uint32_t)a01, s[2] = (uint32_t)a10, s[3] = (uint32_t)a11;
#else
    uint32_t s00 = s[0], s01 = s[1], s10 = s[2], s11 = s[3];
    const int16_t *c1 = c + ET_WFAN;
    for (int k = 0; k < n; k++) {
        s00 += (uint32_t)(c[k] * u0[k]);
        s01 += (uint32_t)(c1[k] * u0[k]);
        s10 += (uint32_t)(c[k] * u1[k]);
        s11 += (uint32_t)(c1[k] * u1[k]);
    }
    s[0] = s00, s[1] = s01, s[2] = s10, s[3] = s11;
#endif
}

/* One filter's weights minus their zero point as int16 (each in [-255, 255]), zero beyond fan up to
 * fan4, in the dot products' order (swizzled on the DSP path); returns their sum. */
static int32_t et_conv_fwd_weights(const uint8_t *w, int32_t zw, int fan, int fan4, int16_t *c)
{
    int k = 0;
    uint32_t sw = 0; /* sum of the raw weights */
#if defined(__ARM_FEATURE_DSP)
    const int32_t zz = (int32_t)((uint32_t)zw * 0x10001u);
    for (; k + 4 <= fan; k += 4) { /* [w0 w1 w2 w3] -> (w0 - zw, w2 - zw), (w1 - zw, w3 - zw) */
        const uint32_t v = et_load32(w + k);
        const int32_t e = (int32_t)__ssub16((int16x2_t)__uxtb16(v), zz);
        const int32_t o = (int32_t)__ssub16((int16x2_t)et_uxtb16_odd(v), zz);
        memcpy(c + k, &e, 4);
        memcpy(c + k + 2, &o, 4);
        sw = __usada8(v, 0, sw);
    }
    if (k < fan) { /* the last, partial group: zeros in its unused taps, then swizzled */
        for (int j = k; j < fan; j++) c[j] = (int16_t)(w[j] - zw), sw += w[j];
        for (int j = fan; j < fan4; j++) c[j] = 0;
        et_swizzle(c + k, 4);
    }
#else
    for (; k < fan; k++) c[k] = (int16_t)(w[k] - zw), sw += w[k];
    for (; k < fan4; k++) c[k] = 0;
#endif
    return (int32_t)(sw - (uint32_t)fan * (uint32_t)zw);
}

/* Conv2d / Conv1d (H = 1) with a fan-in above ET_WFAN: the reference loop. */
ET_NOINLINE static void et_conv_fwd_direct(const et_layer *d, const uint8_t *x, const uint8_t *w, int32_t zw,
                                           const int32_t *b, int32_t m, int32_t shift, uint8_t *y)
{
    const int ci_n = d->in_c, ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw;
    const int32_t zx = d->in_zp;
    for (int co = 0; co < d->out_c; co++) {
        const uint8_t *wc = w + (int32_t)co * ci_n * kh * kw;
        for (int oy = 0; oy < d->out_h; oy++) {
            const int y0 = oy * d->sh - d->ph;
            for (int ox = 0; ox < d->out_w; ox++) {
                const int x0 = ox * d->sw - d->pw;
                uint32_t acc = (uint32_t)b[co];
                for (int ci = 0; ci < ci_n; ci++) {
                    const uint8_t *xc = x + (int32_t)ci * ih * iw;
                    const uint8_t *wk = wc + ci * kh * kw;
                    for (int ky = 0; ky < kh; ky++) {
                        const int iy = y0 + ky;
                        if (iy < 0 || iy >= ih) continue;
                        for (int kx = 0; kx < kw; kx++) {
                            const int ix = x0 + kx;
                            if (ix < 0 || ix >= iw) continue;
                            acc += (uint32_t)(((int32_t)xc[iy * iw + ix] - zx) * ((int32_t)wk[ky * kw + kx] - zw));
                        }
                    }
                }
                y[((int32_t)co * d->out_h + oy) * d->out_w + ox] = et_requant((int32_t)acc, m, shift, d->out_zp);
            }
        }
    }
}

/* Outputs of one pair of filters (int16 weights c, et_conv_fwd_weights; accumulators starting at base0,
 * base1) at n gathered positions, two at a time (a small frame of its own keeps GCC's spills cheap). */
ET_NOINLINE static void et_conv_fwd_rows(const et_rq *rq, const int16_t *c, const uint8_t *u, int32_t n, int fan4,
                                     uint32_t base0, uint32_t base1, uint8_t *y0, uint8_t *y1)
{
    const et_rq q = *rq;
    const int32_t dy = (int32_t)(y1 - y0);
    const uint8_t *end = u + (n & ~1) * fan4;
    for (; u != end; u += 2 * fan4, y0 += 2) {
        uint32_t s[4] = {base0, base1, base0, base1};
        et_dot_conv_fwd(c, u, u + fan4, fan4, s);
        y0[0] = et_rq_apply(&q, s[0]);
        y0[dy] = et_rq_apply(&q, s[1]);
        y0[1] = et_rq_apply(&q, s[2]);
        y0[dy + 1] = et_rq_apply(&q, s[3]);
    }
    if (n & 1) { /* an odd last position runs alone (its bytes used twice) */
        uint32_t s[4] = {base0, base1, base0, base1};
        et_dot_conv_fwd(c, u, u, fan4, s);
        y0[0] = et_rq_apply(&q, s[0]);
        y0[dy] = et_rq_apply(&q, s[1]);
    }
}

/* Conv2d / Conv1d (H = 1): cross-correlation with zero padding (the real value 0), 32-bit
 * accumulator that wraps: acc = b + sum (x - zx)(w - zw) = b - zx sum c + sum x c with c = w - zw
 * (mod 2**32). The raw input bytes of up to ET_CONV_COL / fan4 positions are gathered at a time
 * (et_conv_fwd_gather); for each pair of filters, c is expanded to int16 (et_conv_fwd_weights) and run over
 * the gathered positions two at a time (et_dot_conv_fwd). */
ET_NOINLINE void et_conv_fwd(const et_layer *d, const uint8_t *x, const uint8_t *w, int32_t zw, const int32_t *b,
                             int32_t m, int32_t shift, uint8_t *y)
{
    const int fan = d->in_c * d->kh * d->kw, fan4 = (fan + 3) & ~3;
    const int32_t np = (int32_t)d->out_h * d->out_w;
    const int co_n = d->out_c;
    if (fan4 > ET_WFAN) {
        et_conv_fwd_direct(d, x, w, zw, b, m, shift, y);
        return;
    }
    const et_rq rq = et_rq_make(m, shift, d->out_zp);
    const uint32_t zx = (uint32_t)d->in_zp;
    const int32_t chunk = ((ET_CONV_COL - 4) / fan4) & ~1;
    ET_ALIGN8 int16_t c[2 * ET_WFAN];
    ET_ALIGN8 uint8_t col[ET_CONV_COL];
    ET_ALIGN8 uint8_t xp[ET_CONV_PAD];
    int16_t tab[ET_WFAN];
    const int padded = et_conv_fwd_pad(d, x, xp, tab);
    for (int32_t p0 = 0; p0 < np; p0 += chunk) {
        const int32_t p1 = np - p0 < chunk ? np : p0 + chunk;
        if (padded)
            et_conv_fwd_gather(d, xp, tab, p0, p1, fan4, col);
        else
            et_conv_fwd_gather_bounds(d, x, p0, p1, fan4, col);
        for (int co = 0; co < co_n; co += 2) {
            const int c1 = co + 1 < co_n ? co + 1 : co; /* an odd last filter runs twice, written twice */
            const uint32_t base0 = (uint32_t)b[co] - zx * (uint32_t)et_conv_fwd_weights(w + co * fan, zw, fan, fan4, c);
            const uint32_t base1 = (uint32_t)b[c1] -
                zx * (uint32_t)et_conv_fwd_weights(w + c1 * fan, zw, fan, fan4, c + ET_WFAN);
            et_conv_fwd_rows(&rq, c, col, p1 - p0, fan4, base0, base1, y + co * np + p0, y + c1 * np + p0);
        }
    }
}

/* ReLU in place: max(q, z). */
ET_NOINLINE void et_relu_fwd(uint8_t *x, int32_t n, int32_t z)
{
    for (int32_t i = 0; i < n; i++)
        if (x[i] < z) x[i] = (uint8_t)z;
}

/* MaxPool without padding: the largest raw value of each window. */
ET_NOINLINE void et_maxpool_fwd(const et_layer *d, const uint8_t *x, uint8_t *y)
{
    for (int c = 0; c < d->out_c; c++)
        for (int oy = 0; oy < d->out_h; oy++)
            for (int ox = 0; ox < d->out_w; ox++) {
                const uint8_t *xw = x + ((int32_t)c * d->in_h + oy * d->sh) * d->in_w + ox * d->sw;
                uint8_t best = 0;
                for (int ky = 0; ky < d->kh; ky++)
                    for (int kx = 0; kx < d->kw; kx++)
                        if (xw[ky * d->in_w + kx] > best) best = xw[ky * d->in_w + kx];
                y[((int32_t)c * d->out_h + oy) * d->out_w + ox] = best;
            }
}

/* GlobalAvgPool: exact sum of q - z over positions, requantized by 1 / positions. */
ET_NOINLINE void et_gap_fwd(const et_layer *d, const uint8_t *x, uint8_t *y)
{
    const int32_t p = (int32_t)d->in_h * d->in_w;
    for (int c = 0; c < d->in_c; c++) {
        uint32_t acc = 0;
        for (int32_t i = 0; i < p; i++) acc += (uint32_t)((int32_t)x[c * p + i] - d->in_zp);
        y[c] = et_requant((int32_t)acc, d->m0, d->shift0, d->out_zp);
    }
}

/* -- loss head (train.fqt.kernels.softmax_minus_onehot_table + quantize_error) ------------------ */

ET_NOINLINE void et_loss_error(const uint8_t *logits, int classes, int label, const double *table, double e_scale,
                               int32_t e_zp, uint8_t *e)
{
    uint8_t qmax = 0;
    for (int c = 0; c < classes; c++)
        if (logits[c] > qmax) qmax = logits[c];
    double total = table[qmax - logits[0]];
    for (int c = 1; c < classes; c++) total = total + table[qmax - logits[c]];
    for (int c = 0; c < classes; c++) {
        double g = table[qmax - logits[c]] / total;
        if (c == label) g -= 1.0;
        e[c] = (uint8_t)et_quantize(g, e_scale, e_zp, 0, 255);
    }
}

/* -- backward (train.fqt.kernels) --------------------------------------------------------------- */

/* n bytes of value v (counted with the kernel that calls it, not as a memset call). */
ET_NO_MEMSET static inline void et_fill(uint8_t *p, int32_t v, int32_t n)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    const uint32_t v4 = (uint32_t)(uint8_t)v * 0x01010101u;
    for (; i + 4 <= n; i += 4) et_st32(p + i, v4);
#endif
    for (; i < n; i++) p[i] = (uint8_t)v;
}

#if defined(__ARM_FEATURE_DSP)
/* Per byte i: a_i >= b_i ? x_i : y_i (USUB8 sets the GE flags, SEL picks by them). */
static inline uint32_t et_sel_ge(uint32_t a, uint32_t b, uint32_t x, uint32_t y)
{
    uint32_t r;
    __asm__("usub8 %0, %1, %2\n\tsel %0, %3, %4" : "=&r"(r) : "r"(a), "r"(b), "r"(x), "r"(y) : "cc");
    return r;
}
#endif

/* saturation_grad: zero error where the output sits at an end of its range and the error would
 * push it further out. `out` is the layer's output, after an in-place ReLU (equivalent: the ReLU's
 * backward has already zeroed the error wherever the ReLU changed the value). The same as clamping e
 * to [ze, 255] where out = 255 and to [0, ze] where out = 0: four bytes at a time with USUB8/SEL. */
ET_NOINLINE void et_saturate(uint8_t *e, const uint8_t *out, int32_t n, int32_t ze)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    const uint32_t z4 = (uint32_t)ze * 0x01010101u, ones = 0x01010101u, full = 0xFFFFFFFFu;
    for (; i + 4 <= n; i += 4) {
        const uint32_t o = et_ld32(out + i);
        const uint32_t hi = et_sel_ge(o, ones, full, z4); /* ze where out = 0, else 255 */
        const uint32_t lo = et_sel_ge(o, full, z4, 0);    /* ze where out = 255, else 0 */
        uint32_t v = et_ld32(e + i);
        v = et_sel_ge(v, lo, v, lo); /* max(v, lo) */
        v = et_sel_ge(v, hi, hi, v); /* min(v, hi) */
        et_st32(e + i, v);
    }
#endif
    for (; i < n; i++) {
        const int32_t ec = (int32_t)e[i] - ze;
        if ((ec < 0 && out[i] == 255) || (ec > 0 && out[i] == 0)) e[i] = (uint8_t)ze;
    }
}

/* relu_grad: pass the error where the ReLU's output is above its zero point (in place). */
ET_NO_MEMSET ET_NOINLINE void et_relu_bwd(uint8_t *e, const uint8_t *out, int32_t n, int32_t z_act, int32_t ze)
{
    if (z_act >= 255) { /* no output is above the top of the range */
        et_fill(e, ze, n);
        return;
    }
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    const uint32_t t4 = (uint32_t)(z_act + 1) * 0x01010101u, z4 = (uint32_t)ze * 0x01010101u;
    for (; i + 4 <= n; i += 4) et_st32(e + i, et_sel_ge(et_ld32(out + i), t4, et_ld32(e + i), z4));
#endif
    for (; i < n; i++)
        if (!(out[i] > z_act)) e[i] = (uint8_t)ze;
}

/* maxpool_grad: each window's error goes to the first largest input of the window (row-major order),
 * ze elsewhere; windows do not overlap. A 2 x 2 window is unrolled. */
ET_NO_MEMSET ET_NOINLINE void et_maxpool_bwd(const et_layer *d, const uint8_t *e_out, const uint8_t *x, uint8_t *e_in,
                                             int32_t ze)
{
    /* the layer's fields in locals: stores through uint8_t pointers may alias anything */
    const int iw = d->in_w, ih = d->in_h, oh = d->out_h, ow = d->out_w, sh = d->sh, sw = d->sw, kh = d->kh,
              kw = d->kw, channels = d->out_c;
    et_fill(e_in, ze, (int32_t)d->in_c * ih * iw);
    for (int c = 0; c < channels; c++)
        for (int oy = 0; oy < oh; oy++) {
            const int32_t row = ((int32_t)c * ih + oy * sh) * iw;
            const uint8_t *eo = e_out + ((int32_t)c * oh + oy) * ow;
            if (kh == 2 && kw == 2) {
                for (int ox = 0; ox < ow; ox++) {
                    const int32_t base = row + ox * sw;
                    const uint8_t *w = x + base;
                    int32_t arg = base;
                    uint8_t best = w[0];
                    if (w[1] > best) best = w[1], arg = base + 1;
                    if (w[iw] > best) best = w[iw], arg = base + iw;
                    if (w[iw + 1] > best) arg = base + iw + 1;
                    e_in[arg] = eo[ox];
                }
                continue;
            }
            for (int ox = 0; ox < ow; ox++) {
                const int32_t base = row + ox * sw;
                int32_t arg = base;
                for (int ky = 0; ky < kh; ky++)
                    for (int kx = 0; kx < kw; kx++)
                        if (x[base + ky * iw + kx] > x[arg]) arg = base + ky * iw + kx;
                e_in[arg] = eo[ox];
            }
        }
}

/* global_avg_pool_grad: every position gets requant(e - ze) at scale s_e / positions. */
ET_NO_MEMSET ET_NOINLINE void et_gap_bwd(const et_layer *d, const uint8_t *e_out, uint8_t *e_in, int32_t ze)
{
    const int32_t p = (int32_t)d->in_h * d->in_w;
    for (int c = 0; c < d->in_c; c++)
        et_fill(e_in + c * p, et_requant((int32_t)e_out[c] - ze, d->err_m, d->err_shift, ze), p);
}

/* partial_mask + prune_error_per_sample for one sample: keep the k rows with the largest sum of
 * |e - ze| (ties keep the lower index), k from dynamic_k with the running maximum e_max. Writes the
 * kept rows (ascending) to `kept`, zeroes the others in `e`, returns k. */
ET_NO_MEMSET ET_NOINLINE int et_select_rows(uint8_t *e, int rows, int32_t positions, int32_t ze, double e_scale,
                                            double *e_max, double lam_min, double lam_max, int32_t *sums,
                                            uint16_t *kept)
{
    int64_t total = 0;
    for (int r = 0; r < rows; r++) {
        const uint8_t *er = e + r * positions;
        uint32_t s = 0;
        int32_t p = 0;
#if defined(__ARM_FEATURE_DSP)
        const uint32_t z4 = (uint32_t)ze * 0x01010101u;
        for (; p + 4 <= positions; p += 4) s = __usada8(et_ld32(er + p), z4, s); /* sum |e - ze| of 4 bytes */
#endif
        for (; p < positions; p++) {
            const int32_t ec = (int32_t)er[p] - ze;
            s += (uint32_t)(ec < 0 ? -ec : ec);
        }
        sums[r] = (int32_t)s;
        total += (int32_t)s;
    }
    const double level = (double)total / (double)((int64_t)positions * rows) * e_scale;
    const double running = level > *e_max ? level : *e_max;
    *e_max = running;
    double ratio = 1.0;
    if (running > 0.0) {
        ratio = fabs(level / (running < 1e-300 ? 1e-300 : running));
        if (ratio > 1.0) ratio = 1.0;
    }
    int k = (int)floor((lam_min + ratio * (lam_max - lam_min)) * (double)rows + 1e-9);
    if (k < 1) k = 1;
    int n = 0;
    for (int r = 0; r < rows; r++) {
        int rank = 0;
        for (int j = 0; j < rows && rank < k; j++)
            if (sums[j] > sums[r] || (sums[j] == sums[r] && j < r)) rank++;
        if (rank < k)
            kept[n++] = (uint16_t)r;
        else
            et_fill(e + r * positions, ze, positions);
    }
    return n;
}

/* dense_weight_grad for one row: g[k] (+)= (e_r - ze)(a_k - za), as er a_k + c with c = -er za
 * (the same exact product). */
ET_NOINLINE void et_dense_grad_row(int32_t er, const uint8_t *a, int32_t za, int n_in, int32_t *g, int add)
{
    const int32_t c = -er * za;
    int k = 0;
    if (add) {
        for (; k + 4 <= n_in; k += 4) {
            const int32_t g0 = g[k], g1 = g[k + 1], g2 = g[k + 2], g3 = g[k + 3];
            g[k] = g0 + (er * a[k] + c);
            g[k + 1] = g1 + (er * a[k + 1] + c);
            g[k + 2] = g2 + (er * a[k + 2] + c);
            g[k + 3] = g3 + (er * a[k + 3] + c);
        }
        for (; k < n_in; k++) g[k] += er * a[k] + c;
    } else {
        for (; k + 4 <= n_in; k += 4) {
            g[k] = er * a[k] + c;
            g[k + 1] = er * a[k + 1] + c;
            g[k + 2] = er * a[k + 2] + c;
            g[k + 3] = er * a[k + 3] + c;
        }
        for (; k < n_in; k++) g[k] = er * a[k] + c;
    }
}

/* The errors (minus ze) that tap (ky, kx) of one filter meets at the flat input positions
 * f = s .. s + len - 1 of an input channel (f = iy * iw + ix), 0 where the tap meets no output
 * position there; returns their sum. */
ET_NO_MEMSET static int32_t et_tap_errors(const et_layer *d, const uint8_t *e_row, int32_t ze, int ky, int kx, int32_t s, int len,
                             int16_t *c)
{
    const int iw = d->in_w, oh = d->out_h, ow = d->out_w, sh = d->sh, sw = d->sw;
    int iy = (int)(s / iw), ix = (int)(s - (int32_t)iy * iw);
    int32_t sum = 0;
    for (int t = 0; t < len; iy++, ix = 0) {
        const int n = iw - ix < len - t ? iw - ix : len - t; /* the part of input row iy in range */
        const int ty = iy + d->ph - ky;
        int16_t *cr = c + t;
        t += n;
        if (ty < 0 || ty % sh || ty / sh >= oh) {
            for (int i = 0; i < n; i++) cr[i] = 0;
            continue;
        }
        const uint8_t *er = e_row + (ty / sh) * ow;
        const int tx0 = ix + d->pw - kx; /* tx = ix + pw - kx = ox * sw at a hit */
        if (sw == 1) {
            /* hits: 0 <= tx0 + i < ow */
            const int i0 = tx0 < 0 ? (-tx0 < n ? -tx0 : n) : 0;
            int i1 = ow - tx0 < n ? ow - tx0 : n, i = 0;
            if (i1 < i0) i1 = i0;
            for (; i < i0; i++) cr[i] = 0;
            for (; i < i1; i++) {
                const int32_t v = (int32_t)er[tx0 + i] - ze;
                sum += v;
                cr[i] = (int16_t)v;
            }
            for (; i < n; i++) cr[i] = 0;
        } else {
            for (int i = 0; i < n; i++) {
                const int tx = tx0 + i;
                int32_t v = 0;
                if (tx >= 0 && tx % sw == 0 && tx / sw < ow) v = (int32_t)er[tx / sw] - ze;
                sum += v;
                cr[i] = (int16_t)v;
            }
        }
    }
    return sum;
}

/* conv_weight_grad for one filter: g[ci][ky][kx] (+)= sum over output positions of
 * (e - ze)(a - za), the padding contributing 0. Per tap (ky, kx) the errors are laid out over the
 * flat input positions the tap reaches (et_tap_errors, c; rows of one input channel are
 * contiguous, so with 0 between them one stretch covers every hit) and each input channel is a
 * dot product with its raw activations: sum c a - za sum c. The stretch is widened to a multiple
 * of 4 inside the channel where it can be, and cut into pieces of ET_COL. */
/* s[i] = sum over `rows` rows of sum_k c[k] u_i[k] (mod 2**32), k < 4: c holds the rows of 4 one after
 * the other (swizzled), u_i has the row stride `stride`. */
static inline void et_dot_rows4_1x2(const int16_t *c, int rows, const uint8_t *u0, const uint8_t *u1, int stride,
                                    uint32_t s[2])
{
#if defined(__ARM_FEATURE_DSP)
    int32_t a0 = 0, a1 = 0;
    for (const int16_t *end = c + 4 * rows; c != end; c += 4, u0 += stride, u1 += stride) {
        const uint32_t p = et_load32(u0), q = et_load32(u1);
        const int32_t ce = (int32_t)et_load32(c), co = (int32_t)et_load32(c + 2);
        a0 = __smlad((int32_t)__uxtb16(p), ce, a0);
        a0 = __smlad(et_uxtb16_odd(p), co, a0);
        a1 = __smlad((int32_t)__uxtb16(q), ce, a1);
        a1 = __smlad(et_uxtb16_odd(q), co, a1);
    }
    s[0] = (uint32_t)a0, s[1] = (uint32_t)a1;
#else
    uint32_t s0 = 0, s1 = 0;
    for (int y = 0; y < rows; y++, c += 4, u0 += stride, u1 += stride)
        for (int k = 0; k < 4; k++) {
            s0 += (uint32_t)(c[k] * u0[k]);
            s1 += (uint32_t)(c[k] * u1[k]);
        }
    s[0] = s0, s[1] = s1;
#endif
}

/* Stride 1: the errors are laid out once per filter with the row stride pw2 = ow + kw - 1 of the
 * input padded to the output's reach (ec[oy pw2 + ox] = e - ze, 0 for ox >= ow), and each input
 * channel is copied into a buffer with that row stride, za in the padding (the centred value 0; the
 * border is filled once, as every channel has the same). Tap (ky, kx) is then one contiguous dot
 * product of ec with the padded channel from ky pw2 + kx: sum ec a - za sum ec; two taps share each
 * load of ec. Returns 0 where the buffers are too small (then the general path runs). */
ET_NO_MEMSET static inline int et_conv_grad_row_s1(const et_layer *d, const uint8_t *e_row, int32_t ze,
                                                   const uint8_t *a, int32_t *g, int add, int16_t *ec, uint8_t *ap)
{
    const int ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw, ci_n = d->in_c, oh = d->out_h, ow = d->out_w;
    const int pw2 = ow + kw - 1, ph2 = oh + kh - 1, taps = kh * kw;
    const int32_t za = d->in_zp;
    if (d->sh != 1 || d->sw != 1 || oh < 1 || ow < 1) return 0;
    const int len = (oh - 1) * pw2 + ow, len4 = (len + 3) & ~3, n_ap = ph2 * pw2 + 4;
    if (len4 > ET_COL || n_ap > 2 * ET_COL) return 0;
    /* outputs at most 4 wide: ec rows of 4 (no columns of 0 between them), a dot product per row */
    const int rows4 = ow <= 4 && oh > 1 && 4 * oh <= ET_COL;
    const int cw = rows4 ? 4 : pw2; /* the row stride of ec */
    int32_t esum = 0;
    {
        int i = 0;
        for (int oy = 0; oy < oh; oy++) {
            const uint8_t *er = e_row + oy * ow;
            for (int ox = 0; ox < ow; ox++) {
                const int32_t v = (int32_t)er[ox] - ze;
                esum += v;
                ec[i++] = (int16_t)v;
            }
            if (oy + 1 < oh || rows4)
                for (int k = ow; k < cw; k++) ec[i++] = 0;
        }
        for (; i < len4; i++) ec[i] = 0;
    }
    et_swizzle(ec, rows4 ? 4 * oh : len4);
    const uint32_t corr = (uint32_t)za * (uint32_t)esum;
    /* the input inside the padded buffer: row y <-> input row y - ph, column x <-> input column x - pw */
    const int y0 = d->ph, x0 = d->pw;
    const int ny = ih < ph2 - y0 ? ih : ph2 - y0, nx = iw < pw2 - x0 ? iw : pw2 - x0;
    {
        const uint8_t zb = (uint8_t)za;
        for (int i = 0; i < n_ap; i++) ap[i] = zb;
    }
    for (int ci = 0; ci < ci_n; ci++) {
        const uint8_t *ac = a + (int32_t)ci * ih * iw;
        for (int y = 0; y < ny; y++) {
            uint8_t *dr = ap + (y0 + y) * pw2 + x0;
            const uint8_t *sr = ac + y * iw;
            int x = 0;
#if defined(__ARM_FEATURE_DSP)
            for (; x + 4 <= nx; x += 4) {
                const uint32_t v = et_load32(sr + x);
                memcpy(dr + x, &v, 4);
            }
#endif
            for (; x < nx; x++) dr[x] = sr[x];
        }
        int32_t *gc = g + (int32_t)ci * taps;
        for (int t = 0; t < taps; t += 2) {
            const int pair = t + 1 < taps;
            const int ky0 = t / kw, kx0 = t - ky0 * kw;
            const int t1 = pair ? t + 1 : t, ky1 = t1 / kw, kx1 = t1 - ky1 * kw;
            uint32_t r[2];
            if (rows4)
                et_dot_rows4_1x2(ec, oh, ap + ky0 * pw2 + kx0, ap + ky1 * pw2 + kx1, pw2, r);
            else
                et_dot_1x2(ec, ap + ky0 * pw2 + kx0, ap + ky1 * pw2 + kx1, len4, r);
            gc[t] = (int32_t)((add ? (uint32_t)gc[t] : 0u) + r[0] - corr);
            if (pair) gc[t + 1] = (int32_t)((add ? (uint32_t)gc[t + 1] : 0u) + r[1] - corr);
        }
    }
    return 1;
}

/* r[kx] += sum over n blocks i of sum_j c[4 i + j] a_i[j + kx], kx < 3: c holds blocks of 4 (swizzled),
 * a_i = a + i * step (et_conv_grad_row_k3). */
static inline void et_k3_blocks(const int16_t *c, const uint8_t *a, int n, int step, uint32_t r[3])
{
    uint32_t r0 = r[0], r1 = r[1], r2 = r[2];
    for (const int16_t *end = c + 4 * n; c != end; c += 4, a += step) {
#if defined(__ARM_FEATURE_DSP)
        const int32_t ce = (int32_t)et_ld32(c), co = (int32_t)et_ld32(c + 2);
        const uint32_t p = et_ld32(a), q = et_ld32(a + 2);
        const int32_t a02 = (int32_t)__uxtb16(p), a13 = et_uxtb16_odd(p);
        const int32_t a24 = (int32_t)__uxtb16(q), a35 = et_uxtb16_odd(q);
        r0 = (uint32_t)__smlad(a13, co, __smlad(a02, ce, (int32_t)r0));
        r1 = (uint32_t)__smlad(a24, co, __smlad(a13, ce, (int32_t)r1));
        r2 = (uint32_t)__smlad(a35, co, __smlad(a24, ce, (int32_t)r2));
#else
        for (int j = 0; j < 4; j++) {
            r0 += (uint32_t)(c[j] * a[j]);
            r1 += (uint32_t)(c[j] * a[j + 1]);
            r2 += (uint32_t)(c[j] * a[j + 2]);
        }
#endif
    }
    r[0] = r0, r[1] = r1, r[2] = r2;
}

/* Stride 1 with kernels at most 3 wide: the errors are laid out once per filter in blocks of 4
 * output columns (ec, e - ze, 0 past the row's end, swizzled), and each input channel is copied into
 * a buffer whose rows hold a whole number of blocks plus the 2 columns the taps reach beyond them, za
 * in the padding. For output row oy, block b and kernel row ky, two word loads at column 4 b (+ 2) of
 * buffer row oy + ky give the bytes a0 .. a5, which UXTB16 splits into (a0, a2), (a1, a3), (a2, a4),
 * (a3, a5): each of the 3 taps kx is then 2 SMLADs with the block's two words of errors (12 MACs from
 * 2 loads, 4 UXTB16 and 6 SMLADs). g = sum ec a - za sum ec, as in et_conv_grad_row_s1. Returns 0
 * where the layer does not qualify or the buffers are too small. */
ET_NO_MEMSET ET_NOINLINE static int et_conv_grad_row_k3(const et_layer *d, const uint8_t *e_row, int32_t ze,
                                                        const uint8_t *a, int32_t *g, int add)
{
    const int ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw, oh = d->out_h, ow = d->out_w;
    if (d->sh != 1 || d->sw != 1 || kw > 3 || oh < 1 || ow < 1) return 0;
    const int nb = (ow + 3) / 4, stride = 4 * nb + 2, rows = oh + kh - 1;
    if (oh * nb * 4 > ET_COL || rows * stride + 4 > 2 * ET_COL) return 0;
    ET_ALIGN8 int16_t ec[ET_COL];
    ET_ALIGN8 uint8_t ap[2 * ET_COL + 4];
    int32_t esum = 0;
    {
        int16_t *c = ec;
        for (int oy = 0; oy < oh; oy++) {
            const uint8_t *er = e_row + oy * ow;
            for (int ox = 0; ox < 4 * nb; ox++) {
                const int32_t v = ox < ow ? (int32_t)er[ox] - ze : 0;
                esum += v;
                *c++ = (int16_t)v;
            }
        }
        et_swizzle(ec, oh * nb * 4);
    }
    const uint32_t corr = (uint32_t)d->in_zp * (uint32_t)esum;
    const uint32_t za4 = (uint32_t)d->in_zp * 0x01010101u;
    for (int i = 0; i < rows * stride + 4; i += 4) et_st32(ap + i, za4);
    /* buffer row y <-> input row y - ph, column x <-> input column x - pw */
    const int y0 = d->ph, x0 = d->pw;
    const int ny = ih < rows - y0 ? ih : rows - y0, nx = iw < stride - x0 ? iw : stride - x0;
    for (int ci = 0; ci < d->in_c; ci++) {
        const uint8_t *ac = a + (int32_t)ci * ih * iw;
        for (int y = 0; y < ny; y++) {
            uint8_t *dr = ap + (y0 + y) * stride + x0;
            const uint8_t *sr = ac + y * iw;
            int x = 0;
            for (; x + 4 <= nx; x += 4) et_st32(dr + x, et_ld32(sr + x));
            for (; x < nx; x++) dr[x] = sr[x];
        }
        int32_t *gc = g + (int32_t)ci * kh * kw;
        for (int ky = 0; ky < kh; ky++, gc += kw) {
            uint32_t r[3] = {0, 0, 0};
            const uint8_t *ar = ap + ky * stride;
            if (nb == 1) {
                et_k3_blocks(ec, ar, oh, stride, r);
            } else {
                for (int oy = 0; oy < oh; oy++, ar += stride) et_k3_blocks(ec + oy * nb * 4, ar, nb, 4, r);
            }
            const uint32_t r0 = r[0], r1 = r[1], r2 = r[2];
            gc[0] = (int32_t)((add ? (uint32_t)gc[0] : 0u) + r0 - corr);
            if (kw > 1) gc[1] = (int32_t)((add ? (uint32_t)gc[1] : 0u) + r1 - corr);
            if (kw > 2) gc[2] = (int32_t)((add ? (uint32_t)gc[2] : 0u) + r2 - corr);
        }
    }
    return 1;
}

ET_NO_MEMSET ET_NOINLINE void et_conv_grad_row(const et_layer *d, const uint8_t *e_row, int32_t ze, const uint8_t *a,
                                               int32_t *g, int add)
{
    const int ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw, ci_n = d->in_c;
    const int32_t hw = (int32_t)ih * iw, za = d->in_zp;
    if (et_conv_grad_row_k3(d, e_row, ze, a, g, add)) return;
    int16_t c[2 * ET_COL]; /* the stride-1 path: ec in the first half, the padded channel in the second */
    if (et_conv_grad_row_s1(d, e_row, ze, a, g, add, c, (uint8_t *)(void *)(c + ET_COL))) return;
    for (int ky = 0; ky < kh; ky++)
        for (int kx = 0; kx < kw; kx++) {
            /* the output rows / columns this tap reaches inside the input */
            int oy0 = 0, oy1 = d->out_h, ox0 = 0, ox1 = d->out_w;
            while (oy0 < oy1 && oy0 * d->sh - d->ph + ky < 0) oy0++;
            while (oy1 > oy0 && (oy1 - 1) * d->sh - d->ph + ky >= ih) oy1--;
            while (ox0 < ox1 && ox0 * d->sw - d->pw + kx < 0) ox0++;
            while (ox1 > ox0 && (ox1 - 1) * d->sw - d->pw + kx >= iw) ox1--;
            int32_t f0 = 0, f1 = 0; /* the flat input stretch [f0, f1) from the first hit to the last */
            if (oy0 < oy1 && ox0 < ox1) {
                f0 = (int32_t)(oy0 * d->sh - d->ph + ky) * iw + ox0 * d->sw - d->pw + kx;
                f1 = (int32_t)((oy1 - 1) * d->sh - d->ph + ky) * iw + (ox1 - 1) * d->sw - d->pw + kx + 1;
                const int32_t l4 = (f1 - f0 + 3) & ~3;
                if (l4 <= hw) { /* widen with positions no hit touches (their c is 0) */
                    if (f0 + l4 <= hw)
                        f1 = f0 + l4;
                    else
                        f0 = hw - l4, f1 = hw;
                }
            }
            int first = !add;
            if (f0 == f1)
                for (int ci = 0; ci < ci_n; ci++) {
                    int32_t *gi = g + (ci * kh + ky) * kw + kx;
                    if (first) *gi = 0;
                }
            for (int32_t s = f0; s < f1; s += ET_COL, first = 0) {
                const int len = f1 - s < ET_COL ? (int)(f1 - s) : ET_COL;
                const uint32_t csum = (uint32_t)et_tap_errors(d, e_row, ze, ky, kx, s, len, c);
                et_swizzle(c, len & ~3);
                const uint32_t corr = (uint32_t)za * csum;
                for (int ci = 0; ci < ci_n; ci += 2) {
                    const int pair = ci + 1 < ci_n;
                    const uint8_t *a0 = a + (int32_t)ci * hw + s;
                    uint32_t r[2];
                    et_dot_1x2(c, a0, pair ? a0 + hw : a0, len, r);
                    int32_t *gi = g + (ci * kh + ky) * kw + kx;
                    gi[0] = (int32_t)((first ? 0u : (uint32_t)gi[0]) + r[0] - corr);
                    if (pair) gi[kh * kw] = (int32_t)((first ? 0u : (uint32_t)gi[kh * kw]) + r[1] - corr);
                }
            }
        }
}

/* dense_input_grad: e_in[k] = requant(sum over kept rows (e_r - ze)(w_rk - zw)), 32-bit sum that
 * wraps, as sum_r (e_r - ze) w_rk - zw sum_r (e_r - ze); four inputs k at a time share each kept
 * row's error (one word load of weights; on the DSP, SMLABB/SMLATB on the UXTB16 halves). */
ET_NOINLINE void et_dense_bwd_input(const uint8_t *e, const uint16_t *kept, int nk, const uint8_t *w, int32_t zw,
                                    int n_in, int32_t ze, int32_t m, int32_t shift, uint8_t *e_in)
{
    const et_rq rq = et_rq_make(m, shift, ze);
    uint32_t esum = 0;
    for (int j = 0; j < nk; j++) esum += (uint32_t)((int32_t)e[kept[j]] - ze);
    const uint32_t corr = (uint32_t)zw * esum;
    int k = 0;
    for (; k + 4 <= n_in; k += 4) {
        uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#if defined(__ARM_FEATURE_DSP)
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int j = 0; j < nk; j++) {
            const int r = kept[j];
            const int32_t ev = (int32_t)e[r] - ze;
            const uint32_t v = et_load32(w + (int32_t)r * n_in + k);
            const int32_t ve = (int32_t)__uxtb16(v), vo = et_uxtb16_odd(v);
            a0 = __smlabb(ve, ev, a0);
            a2 = __smlatb(ve, ev, a2);
            a1 = __smlabb(vo, ev, a1);
            a3 = __smlatb(vo, ev, a3);
        }
        s0 = (uint32_t)a0, s1 = (uint32_t)a1, s2 = (uint32_t)a2, s3 = (uint32_t)a3;
#else
        for (int j = 0; j < nk; j++) {
            const int r = kept[j];
            const int32_t ev = (int32_t)e[r] - ze;
            const uint8_t *wr = w + (int32_t)r * n_in + k;
            s0 += (uint32_t)(ev * wr[0]);
            s1 += (uint32_t)(ev * wr[1]);
            s2 += (uint32_t)(ev * wr[2]);
            s3 += (uint32_t)(ev * wr[3]);
        }
#endif
        e_in[k] = et_rq_apply(&rq, s0 - corr);
        e_in[k + 1] = et_rq_apply(&rq, s1 - corr);
        e_in[k + 2] = et_rq_apply(&rq, s2 - corr);
        e_in[k + 3] = et_rq_apply(&rq, s3 - corr);
    }
    for (; k < n_in; k++) {
        uint32_t s = 0;
        for (int j = 0; j < nk; j++) {
            const int r = kept[j];
            s += (uint32_t)(((int32_t)e[r] - ze) * w[(int32_t)r * n_in + k]);
        }
        e_in[k] = et_rq_apply(&rq, s - corr);
    }
}

/* conv_input_grad: the transposed convolution of the kept filters' errors with their weights. */
ET_NOINLINE void et_conv_bwd_input(const et_layer *d, const uint8_t *e, const uint16_t *kept, int nk,
                                   const uint8_t *w, int32_t zw, int32_t ze, int32_t m, int32_t shift, uint8_t *e_in)
{
    const int kh = d->kh, kw = d->kw, oh = d->out_h, ow = d->out_w;
    for (int ci = 0; ci < d->in_c; ci++)
        for (int iy = 0; iy < d->in_h; iy++)
            for (int ix = 0; ix < d->in_w; ix++) {
                uint32_t acc = 0;
                for (int ky = 0; ky < kh; ky++) {
                    const int ty = iy + d->ph - ky;
                    if (ty < 0 || ty % d->sh) continue;
                    const int oy = ty / d->sh;
                    if (oy >= oh) continue;
                    for (int kx = 0; kx < kw; kx++) {
                        const int tx = ix + d->pw - kx;
                        if (tx < 0 || tx % d->sw) continue;
                        const int ox = tx / d->sw;
                        if (ox >= ow) continue;
                        for (int j = 0; j < nk; j++) {
                            const int co = kept[j];
                            const int32_t ev = (int32_t)e[((int32_t)co * oh + oy) * ow + ox] - ze;
                            const int32_t wv = (int32_t)w[(((int32_t)co * d->in_c + ci) * kh + ky) * kw + kx] - zw;
                            acc += (uint32_t)(ev * wv);
                        }
                    }
                }
                e_in[((int32_t)ci * d->in_h + iy) * d->in_w + ix] = et_requant((int32_t)acc, m, shift, ze);
            }
}

/* -- the driver ---------------------------------------------------------------------------------- */

static const uint8_t *weights_of(const et_layer *d)
{
    return d->w_off >= 0 ? A8(d->w_off) : d->w_flash;
}

static const int32_t *biases_of(const et_layer *d)
{
    return d->b_off >= 0 ? A32(d->b_off) : d->b_flash;
}

static int32_t fan_in(const et_layer *d)
{
    return (int32_t)d->in_c * d->kh * d->kw; /* dense: in_c inputs, kh = kw = 1 */
}

static int32_t positions(const et_layer *d)
{
    return (int32_t)d->out_h * d->out_w;
}

static void set_requant(int i)
{
    const et_layer *d = &et_model.layers[i];
    et_live *lv = &et_model.live[i];
    et_multiplier(d->in_scale * lv->w_scale / d->out_scale, &lv->m, &lv->shift);
}

int et_init(void)
{
    for (int i = 0; i < et_model.n_layers; i++) {
        const et_layer *d = &et_model.layers[i];
        et_live *lv = &et_model.live[i];
        lv->w_scale = d->w_scale0;
        lv->b_scale = d->b_scale0;
        lv->w_zp = d->w_zp0;
        lv->m = d->m0;
        lv->shift = d->shift0;
        if (d->train == ET_FROZEN) continue;
        if (d->w_off >= 0) memcpy(A8(d->w_off), d->w_flash, (size_t)d->out_c * fan_in(d));
        memcpy(A8(d->b_off), d->b_flash, (size_t)d->out_c * sizeof(int32_t));
        if (!et_model.grad_rows) {
            if (d->gw_off >= 0) memset(A8(d->gw_off), 0, (size_t)d->out_c * fan_in(d) * sizeof(int32_t));
            memset(A8(d->gb_off), 0, (size_t)d->out_c * sizeof(int32_t));
        }
        *ADBL(d->emax_off) = 0.0;
    }
    return ET_OK;
}

static void forward(const uint8_t *x, int sample)
{
    memcpy(A8(et_model.layers[0].in_off), x, (size_t)et_model.input_size);
    for (int i = 0; i < et_model.n_layers; i++) {
        const et_layer *d = &et_model.layers[i];
        const et_live *lv = &et_model.live[i];
        const uint8_t *in = A8(d->in_off);
        uint8_t *out = A8(d->out_off);
        int32_t n_out = (int32_t)d->out_c * d->out_h * d->out_w;
        switch (d->kind) {
        case ET_DENSE:
            et_dense_fwd(in, d->in_zp, weights_of(d), lv->w_zp, biases_of(d), d->in_c, d->out_c, lv->m, lv->shift,
                         d->out_zp, out);
            break;
        case ET_CONV:
            et_conv_fwd(d, in, weights_of(d), lv->w_zp, biases_of(d), lv->m, lv->shift, out);
            break;
        case ET_RELU:
            et_relu_fwd(out, n_out, d->out_zp);
            break;
        case ET_MAXPOOL:
            et_maxpool_fwd(d, in, out);
            break;
        case ET_GAP:
            et_gap_fwd(d, in, out);
            break;
        default: /* flatten: the same bytes */
            break;
        }
        observe(0, i, sample, out, (uint32_t)n_out);
    }
}

int et_predict(const uint8_t *x, uint8_t *logits)
{
    forward(x, 0);
    const et_layer *top = &et_model.layers[et_model.n_layers - 1];
    memcpy(logits, A8(top->out_off), (size_t)et_model.classes);
    int best = 0;
    for (int c = 1; c < et_model.classes; c++)
        if (logits[c] > logits[best]) best = c;
    return best;
}

/* One kept row's weight gradient: from the full buffer, or recomputed into the row buffer
 * (one-sample steps keep no full buffer; the errors and inputs are still live). */
static const int32_t *grad_row(int i, int r)
{
    const et_layer *d = &et_model.layers[i];
    const int32_t n = fan_in(d);
    if (!et_model.grad_rows) return A32(d->gw_off) + r * n;
    int32_t *g = A32(d->gw_off);
    const uint8_t *e = A8(d->err_out_off);
    if (d->kind == ET_DENSE)
        et_dense_grad_row((int32_t)e[r] - et_model.e_zp, A8(d->in_off), d->in_zp, (int)n, g, 0);
    else
        et_conv_grad_row(d, e + r * positions(d), et_model.e_zp, A8(d->in_off), g, 0);
    return g;
}

static int32_t bias_grad(int i, int r)
{
    const et_layer *d = &et_model.layers[i];
    if (!et_model.grad_rows) return A32(d->gb_off)[r];
    const uint8_t *e = A8(d->err_out_off) + r * positions(d);
    int32_t s = 0;
    for (int32_t p = 0; p < positions(d); p++) s += (int32_t)e[p] - et_model.e_zp;
    return s;
}

/* The SGD update of layer i after `nb` samples (trainer._apply_requantized with opt_update "sgd"):
 * w' = deq(w) + dw, dw = -lr (g s_e s_a / nb); the weight format is re-ranged to [min w', max w']
 * when any dw is nonzero; the bias moves by -lr (g_b s_e / nb) and is requantized at s_in s_w'. */
ET_NOINLINE void et_update_layer(int i, int nb, const uint16_t *rows, int n_rows)
{
    const et_layer *d = &et_model.layers[i];
    et_live *lv = &et_model.live[i];
    const double lr = et_model.lr, nbd = (double)nb;
    const double s_g = et_model.e_scale * d->in_scale;
    int32_t *b = A32(d->b_off);
    if (d->train == ET_WEIGHT_AND_BIAS) {
        uint8_t *w = A8(d->w_off);
        const int32_t n = fan_in(d);
        /* pass 1: the range of the updated weights (rows without gradient keep their values) */
        double lo = 0.0, hi = 0.0;
        int first = 1, any = 0, j = 0;
        for (int r = 0; r < d->out_c; r++) {
            const int grads = j < n_rows && rows[j] == r;
            const int32_t *g = grads ? grad_row(i, r) : 0;
            j += grads;
            for (int32_t k = 0; k < n; k++) {
                double v = (double)((int32_t)w[r * n + k] - lv->w_zp) * lv->w_scale;
                if (g) {
                    const double dw = -lr * (((double)g[k] * s_g) / nbd);
                    any |= dw != 0.0;
                    v = v + dw;
                }
                if (first || v < lo) lo = v;
                if (first || v > hi) hi = v;
                first = 0;
            }
        }
        if (any) {
            double s_new;
            int32_t z_new;
            et_affine_from_range(lo, hi, &s_new, &z_new);
            j = 0;
            for (int r = 0; r < d->out_c; r++) { /* pass 2: requantize every weight to the new format */
                const int grads = j < n_rows && rows[j] == r;
                const int32_t *g = grads ? grad_row(i, r) : 0;
                j += grads;
                for (int32_t k = 0; k < n; k++) {
                    double v = (double)((int32_t)w[r * n + k] - lv->w_zp) * lv->w_scale;
                    if (g) v = v + -lr * (((double)g[k] * s_g) / nbd);
                    w[r * n + k] = (uint8_t)et_quantize(v, s_new, z_new, 0, 255);
                }
            }
            lv->w_scale = s_new;
            lv->w_zp = z_new;
        }
    }
    const double b_scale = d->in_scale * lv->w_scale;
    int j = 0;
    for (int r = 0; r < d->out_c; r++) {
        double v = (double)b[r] * lv->b_scale;
        if (j < n_rows && rows[j] == r) {
            v = v + -lr * (((double)bias_grad(i, r) * et_model.e_scale) / nbd);
            j++;
        }
        b[r] = (int32_t)et_quantize(v, b_scale, 0, INT32_MIN, INT32_MAX);
    }
    lv->b_scale = b_scale;
    set_requant(i);
    if (!et_model.grad_rows) {
        if (d->gw_off >= 0) memset(A8(d->gw_off), 0, (size_t)d->out_c * fan_in(d) * sizeof(int32_t));
        memset(A8(d->gb_off), 0, (size_t)d->out_c * sizeof(int32_t));
    }
}

static void backward_linear(int i, int sample, int nb, int last)
{
    const et_layer *d = &et_model.layers[i];
    const et_live *lv = &et_model.live[i];
    const int32_t ze = et_model.e_zp, p = positions(d), n = fan_in(d);
    uint8_t *e = A8(d->err_out_off);
    int32_t sums[ET_MAX_ROWS];
    uint16_t kept[ET_MAX_ROWS];
    int nk = d->out_c;
    et_saturate(e, A8(d->out_off), (int32_t)d->out_c * p, ze);
    if (d->train != ET_FROZEN && et_model.partial)
        nk = et_select_rows(e, d->out_c, p, ze, et_model.e_scale, ADBL(d->emax_off), et_model.lam_min,
                            et_model.lam_max, sums, kept);
    else
        for (int r = 0; r < nk; r++) kept[r] = (uint16_t)r;
    observe(1, i, sample, e, (uint32_t)(d->out_c * p));
    if (d->train != ET_FROZEN && !et_model.grad_rows) {
        for (int j = 0; j < nk; j++) {
            const int r = kept[j];
            if (d->train == ET_WEIGHT_AND_BIAS) {
                int32_t *g = A32(d->gw_off) + r * n;
                if (d->kind == ET_DENSE)
                    et_dense_grad_row((int32_t)e[r] - ze, A8(d->in_off), d->in_zp, (int)n, g, 1);
                else
                    et_conv_grad_row(d, e + r * p, ze, A8(d->in_off), g, 1);
            }
            int32_t s = 0;
            for (int32_t q = 0; q < p; q++) s += (int32_t)e[r * p + q] - ze;
            A32(d->gb_off)[r] += s;
        }
    }
    if (i > et_model.lowest) {
        int32_t m, shift;
        et_multiplier(et_model.e_scale * lv->w_scale / et_model.e_scale, &m, &shift);
        if (d->kind == ET_DENSE)
            et_dense_bwd_input(e, kept, nk, weights_of(d), lv->w_zp, (int)n, ze, m, shift, A8(d->err_in_off));
        else
            et_conv_bwd_input(d, e, kept, nk, weights_of(d), lv->w_zp, ze, m, shift, A8(d->err_in_off));
    }
    if (d->train != ET_FROZEN && last) {
        if (!et_model.grad_rows) {
            if (d->train == ET_WEIGHT_AND_BIAS) observe(2, i, sample, A8(d->gw_off), (uint32_t)(d->out_c * n * 4));
            observe(3, i, sample, A8(d->gb_off), (uint32_t)(d->out_c * 4));
            /* every row: rows nobody kept have zero gradient, so their update is -0.0, a no-op */
            for (int r = 0; r < d->out_c; r++) kept[r] = (uint16_t)r;
            nk = d->out_c;
        }
        et_update_layer(i, nb, kept, nk);
    }
}

static int backward(uint8_t label, int sample, int nb, int last)
{
    const et_model_t *mdl = &et_model;
    const et_layer *top = &mdl->layers[mdl->n_layers - 1];
    et_loss_error(A8(top->out_off), mdl->classes, label, mdl->exp_table, mdl->e_scale, mdl->e_zp,
                  A8(top->err_out_off));
    for (int i = mdl->n_layers - 1; i >= mdl->lowest; i--) {
        const et_layer *d = &mdl->layers[i];
        switch (d->kind) {
        case ET_DENSE:
        case ET_CONV:
            backward_linear(i, sample, nb, last);
            break;
        case ET_RELU:
            et_relu_bwd(A8(d->err_out_off), A8(d->out_off), (int32_t)d->out_c * d->out_h * d->out_w, d->out_zp,
                        mdl->e_zp);
            break;
        case ET_MAXPOOL:
            et_maxpool_bwd(d, A8(d->err_out_off), A8(d->in_off), A8(d->err_in_off), mdl->e_zp);
            break;
        case ET_GAP:
            et_gap_bwd(d, A8(d->err_out_off), A8(d->err_in_off), mdl->e_zp);
            break;
        default: /* flatten: the same bytes */
            break;
        }
    }
    return ET_OK;
}

int et_train_step(const uint8_t *x, const uint8_t *y, int n)
{
    if (n < 1 || n > et_model.batch) return ET_BAD_COUNT;
    for (int s = 0; s < n; s++)
        if (y[s] >= et_model.classes) return ET_BAD_LABEL;
    for (int s = 0; s < n; s++) {
        forward(x + (int32_t)s * et_model.input_size, s);
        backward(y[s], s, n, s == n - 1);
    }
    return ET_OK;
}

/* Serialized trained state, per trained layer in order: weights (uint8, if trained), biases
 * (int32), weight scale (double), weight zero point (int32), bias scale (double), e_max (double);
 * native byte order (little-endian on Cortex-M and x86). */
uint32_t et_state_size(void)
{
    uint32_t n = 0;
    for (int i = 0; i < et_model.n_layers; i++) {
        const et_layer *d = &et_model.layers[i];
        if (d->train == ET_FROZEN) continue;
        if (d->train == ET_WEIGHT_AND_BIAS) n += (uint32_t)(d->out_c * fan_in(d));
        n += (uint32_t)d->out_c * 4u + 8u + 4u + 8u + 8u;
    }
    return n;
}

static uint8_t *put(uint8_t *dst, const void *src, uint32_t n)
{
    memcpy(dst, src, n);
    return dst + n;
}

uint32_t et_state_write(uint8_t *dst, uint32_t cap)
{
    const uint32_t need = et_state_size();
    if (cap < need) return 0;
    uint8_t *p = dst;
    for (int i = 0; i < et_model.n_layers; i++) {
        const et_layer *d = &et_model.layers[i];
        const et_live *lv = &et_model.live[i];
        if (d->train == ET_FROZEN) continue;
        if (d->train == ET_WEIGHT_AND_BIAS) p = put(p, A8(d->w_off), (uint32_t)(d->out_c * fan_in(d)));
        p = put(p, A8(d->b_off), (uint32_t)d->out_c * 4u);
        p = put(p, &lv->w_scale, 8);
        p = put(p, &lv->w_zp, 4);
        p = put(p, &lv->b_scale, 8);
        p = put(p, ADBL(d->emax_off), 8);
    }
    return need;
}
