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

/* -- forward (edgetrain.model.forward.layer_forward_int) -------------------------------------- */

/* Dense: y = requant(sum (x - zx)(w - zw) + b), 32-bit accumulator that wraps. */
ET_NOINLINE void et_dense_fwd(const uint8_t *x, int32_t zx, const uint8_t *w, int32_t zw, const int32_t *b,
                              int n_in, int n_out, int32_t m, int32_t shift, int32_t zy, uint8_t *y)
{
    for (int o = 0; o < n_out; o++) {
        const uint8_t *row = w + (int32_t)o * n_in;
        uint32_t acc = (uint32_t)b[o];
        for (int k = 0; k < n_in; k++)
            acc += (uint32_t)(((int32_t)x[k] - zx) * ((int32_t)row[k] - zw));
        y[o] = et_requant((int32_t)acc, m, shift, zy);
    }
}

/* Conv2d / Conv1d (H = 1): cross-correlation with zero padding (the real value 0). */
ET_NOINLINE void et_conv_fwd(const et_layer *d, const uint8_t *x, const uint8_t *w, int32_t zw, const int32_t *b,
                             int32_t m, int32_t shift, uint8_t *y)
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

/* saturation_grad: zero error where the output sits at an end of its range and the error would
 * push it further out. `out` is the layer's output, after an in-place ReLU (equivalent: the ReLU's
 * backward has already zeroed the error wherever the ReLU changed the value). */
ET_NOINLINE void et_saturate(uint8_t *e, const uint8_t *out, int32_t n, int32_t ze)
{
    for (int32_t i = 0; i < n; i++) {
        const int32_t ec = (int32_t)e[i] - ze;
        if ((ec < 0 && out[i] == 255) || (ec > 0 && out[i] == 0)) e[i] = (uint8_t)ze;
    }
}

/* relu_grad: pass the error where the ReLU's output is above its zero point (in place). */
ET_NOINLINE void et_relu_bwd(uint8_t *e, const uint8_t *out, int32_t n, int32_t z_act, int32_t ze)
{
    for (int32_t i = 0; i < n; i++)
        if (!(out[i] > z_act)) e[i] = (uint8_t)ze;
}

/* maxpool_grad: each window's error goes to its first maximum in scan order. */
ET_NOINLINE void et_maxpool_bwd(const et_layer *d, const uint8_t *e_out, const uint8_t *x, uint8_t *e_in,
                                int32_t ze)
{
    memset(e_in, ze, (size_t)d->in_c * d->in_h * d->in_w);
    for (int c = 0; c < d->out_c; c++)
        for (int oy = 0; oy < d->out_h; oy++)
            for (int ox = 0; ox < d->out_w; ox++) {
                const int32_t base = ((int32_t)c * d->in_h + oy * d->sh) * d->in_w + ox * d->sw;
                int32_t arg = base;
                for (int ky = 0; ky < d->kh; ky++)
                    for (int kx = 0; kx < d->kw; kx++)
                        if (x[base + ky * d->in_w + kx] > x[arg]) arg = base + ky * d->in_w + kx;
                e_in[arg] = e_out[((int32_t)c * d->out_h + oy) * d->out_w + ox];
            }
}

/* global_avg_pool_grad: every position gets requant(e - ze) at scale s_e / positions. */
ET_NOINLINE void et_gap_bwd(const et_layer *d, const uint8_t *e_out, uint8_t *e_in, int32_t ze)
{
    const int32_t p = (int32_t)d->in_h * d->in_w;
    for (int c = 0; c < d->in_c; c++)
        memset(e_in + c * p, et_requant((int32_t)e_out[c] - ze, d->err_m, d->err_shift, ze), (size_t)p);
}

/* partial_mask + prune_error_per_sample for one sample: keep the k rows with the largest sum of
 * |e - ze| (ties keep the lower index), k from dynamic_k with the running maximum e_max. Writes the
 * kept rows (ascending) to `kept`, zeroes the others in `e`, returns k. */
ET_NOINLINE int et_select_rows(uint8_t *e, int rows, int32_t positions, int32_t ze, double e_scale, double *e_max,
                               double lam_min, double lam_max, int32_t *sums, uint16_t *kept)
{
    int64_t total = 0;
    for (int r = 0; r < rows; r++) {
        int32_t s = 0;
        for (int32_t p = 0; p < positions; p++) {
            const int32_t ec = (int32_t)e[r * positions + p] - ze;
            s += ec < 0 ? -ec : ec;
        }
        sums[r] = s;
        total += s;
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
            memset(e + r * positions, ze, (size_t)positions);
    }
    return n;
}

/* dense_weight_grad for one row: g[k] (+)= (e_r - ze)(a_k - za). */
ET_NOINLINE void et_dense_grad_row(int32_t er, const uint8_t *a, int32_t za, int n_in, int32_t *g, int add)
{
    if (add)
        for (int k = 0; k < n_in; k++) g[k] += er * ((int32_t)a[k] - za);
    else
        for (int k = 0; k < n_in; k++) g[k] = er * ((int32_t)a[k] - za);
}

/* conv_weight_grad for one filter: g[ci][ky][kx] (+)= sum over output positions of
 * (e - ze)(a - za), the padding contributing 0. */
ET_NOINLINE void et_conv_grad_row(const et_layer *d, const uint8_t *e_row, int32_t ze, const uint8_t *a, int32_t *g,
                                  int add)
{
    const int ih = d->in_h, iw = d->in_w, kh = d->kh, kw = d->kw;
    for (int ci = 0; ci < d->in_c; ci++)
        for (int ky = 0; ky < kh; ky++)
            for (int kx = 0; kx < kw; kx++) {
                int32_t acc = 0;
                for (int oy = 0; oy < d->out_h; oy++) {
                    const int iy = oy * d->sh - d->ph + ky;
                    if (iy < 0 || iy >= ih) continue;
                    const uint8_t *ar = a + ((int32_t)ci * ih + iy) * iw;
                    const uint8_t *er = e_row + oy * d->out_w;
                    for (int ox = 0; ox < d->out_w; ox++) {
                        const int ix = ox * d->sw - d->pw + kx;
                        if (ix < 0 || ix >= iw) continue;
                        acc += ((int32_t)er[ox] - ze) * ((int32_t)ar[ix] - d->in_zp);
                    }
                }
                const int32_t idx = (ci * kh + ky) * kw + kx;
                g[idx] = add ? g[idx] + acc : acc;
            }
}

/* dense_input_grad: e_in[k] = requant(sum over kept rows (e_r - ze)(w_rk - zw)). */
ET_NOINLINE void et_dense_bwd_input(const uint8_t *e, const uint16_t *kept, int nk, const uint8_t *w, int32_t zw,
                                    int n_in, int32_t ze, int32_t m, int32_t shift, uint8_t *e_in)
{
    for (int k = 0; k < n_in; k++) {
        uint32_t acc = 0;
        for (int j = 0; j < nk; j++) {
            const int r = kept[j];
            acc += (uint32_t)(((int32_t)e[r] - ze) * ((int32_t)w[(int32_t)r * n_in + k] - zw));
        }
        e_in[k] = et_requant((int32_t)acc, m, shift, ze);
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
