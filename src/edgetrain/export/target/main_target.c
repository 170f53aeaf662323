/*
 * main_target.c - firmware driver: runs a generated edgetrain model (et_model.h) on inputs read
 * from the host through semihosting, and writes what it computed back to the host.
 *
 * Input file et_in.bin (all integers little-endian int32):
 *     n_steps, n_per_step, n_probe, phase_mode,
 *     n_steps * n_per_step samples, each ET_INPUT_SIZE bytes of x then 1 byte of label y,
 *     n_probe probe inputs of ET_INPUT_SIZE bytes each.
 *
 * Output file et_out.bin, for each training step in order:
 *     the logits (ET_CLASSES bytes) of et_predict on each of the step's samples, before training,
 *     then et_train_step on the step's samples (et_es_step for an ES export, whose et_model.h
 *     defines ET_ES: it pushes them into the ring buffer and may run a generation),
 *     the logits of et_predict on each probe input (after the step),
 *     uint32 little-endian length L of the serialized state, then L bytes from et_state_write
 *     (et_es_state_write).
 * With n_steps == 0 the probe logits and the state are written once, without training.
 * phase_mode is stored in et_phase_mode for the model code and otherwise not interpreted here.
 *
 * Memory: one static buffer of ET_IO_BYTES (default 64 KiB) holds the input file followed by the
 * serialized state; the output is streamed to the host as it is produced. No malloc.
 *
 * et_phase_marker is set to the phase being run (0 setup, 1 predict, 2 train, 3 probe, 4 state),
 * for a debugger or tracer; instruction counts are taken per function symbol anyway.
 *
 * Exit status: 0 success; 2 host file I/O failed; 3 ET_IO_BYTES too small; 4 malformed input;
 * 5 et_init failed; 6 et_predict failed; 7 et_train_step failed; 8 et_state_write failed.
 */
#include <stdint.h>
#include <string.h>

#include "et_model.h"
#include "semihost.h"

#ifndef ET_IO_BYTES
#define ET_IO_BYTES 65536
#endif

/* The training entry points: FQT's (et_kernels.h), or those of an ES export (et_es.h). */
#if defined(ET_ES)
#define et_driver_init et_es_init
#define et_driver_step et_es_step
#define et_driver_state_size et_es_state_size
#define et_driver_state_write et_es_state_write
#else
#define et_driver_init et_init
#define et_driver_step et_train_step
#define et_driver_state_size et_state_size
#define et_driver_state_write et_state_write
#endif

#define IN_FILE "et_in.bin"
#define OUT_FILE "et_out.bin"
#define HEADER_BYTES 16u
#define SAMPLE_BYTES ((uint32_t)ET_INPUT_SIZE + 1u)

enum { PHASE_SETUP = 0, PHASE_PREDICT = 1, PHASE_TRAIN = 2, PHASE_PROBE = 3, PHASE_STATE = 4 };

volatile uint32_t et_phase_marker;
volatile int32_t et_phase_mode;

uint32_t et_stack_peak_bytes(void); /* startup.c */

static uint8_t io_buf[ET_IO_BYTES] __attribute__((aligned(8)));
static uint8_t batch_x[(uint32_t)ET_BATCH * (uint32_t)ET_INPUT_SIZE] __attribute__((aligned(8)));
static uint8_t batch_y[ET_BATCH];
static uint8_t logits[ET_CLASSES] __attribute__((aligned(8)));
static int out_fd = -1;

static int fail(int status, const char *what)
{
    sh_write0("et firmware: ");
    sh_write0(what);
    sh_write0("\n");
    if (out_fd >= 0) {
        sh_close(out_fd);
    }
    return status;
}

static int32_t read_i32(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static int emit(const void *data, uint32_t n)
{
    return sh_write(out_fd, data, n);
}

/* et_predict on one input and append its logits to the output. 0, or an exit status. */
static int predict_and_emit(const uint8_t *x)
{
    int cls = et_predict(x, logits);
    if (cls < 0 || cls >= ET_CLASSES) {
        return fail(6, "et_predict failed");
    }
    if (emit(logits, ET_CLASSES) != 0) {
        return fail(2, "cannot write " OUT_FILE);
    }
    return 0;
}

/* Probe logits then the length-prefixed state, into the output. 0, or an exit status. */
static int probe_and_state(const uint8_t *probes, int32_t n_probe, uint8_t *state_buf, uint32_t state_cap)
{
    et_phase_marker = PHASE_PROBE;
    for (int32_t i = 0; i < n_probe; i++) {
        int rc = predict_and_emit(probes + (uint32_t)i * (uint32_t)ET_INPUT_SIZE);
        if (rc != 0) {
            return rc;
        }
    }
    et_phase_marker = PHASE_STATE;
    uint32_t want = et_driver_state_size();
    uint32_t got = et_driver_state_write(state_buf, state_cap);
    if (got != want) {
        return fail(8, "et_state_write wrote a different number of bytes than et_state_size");
    }
    uint8_t len_le[4] = {(uint8_t)got, (uint8_t)(got >> 8), (uint8_t)(got >> 16), (uint8_t)(got >> 24)};
    if (emit(len_le, 4) != 0 || emit(state_buf, got) != 0) {
        return fail(2, "cannot write " OUT_FILE);
    }
    return 0;
}

int main(void)
{
    et_phase_marker = PHASE_SETUP;

    /* Read the whole input file into io_buf. */
    int fd = sh_open(IN_FILE, SH_MODE_RB);
    if (fd < 0) {
        return fail(2, "cannot open " IN_FILE);
    }
    int32_t len = sh_flen(fd);
    if (len < 0) {
        sh_close(fd);
        return fail(2, "cannot get the length of " IN_FILE);
    }
    if ((uint32_t)len > (uint32_t)ET_IO_BYTES) {
        sh_close(fd);
        sh_write0("et firmware: " IN_FILE " has ");
        sh_write_int(len);
        sh_write0(" bytes, ET_IO_BYTES is ");
        sh_write_int((int32_t)ET_IO_BYTES);
        sh_write0("; rebuild with a larger ET_IO_BYTES\n");
        return 3;
    }
    int32_t got = sh_read(fd, io_buf, (uint32_t)len);
    sh_close(fd);
    if (got != len) {
        return fail(2, "short read of " IN_FILE);
    }

    /* Header and size checks (64-bit sums: the counts come from outside). */
    if ((uint32_t)len < HEADER_BYTES) {
        return fail(4, IN_FILE " is shorter than its 16-byte header");
    }
    int32_t n_steps = read_i32(io_buf);
    int32_t n_per_step = read_i32(io_buf + 4);
    int32_t n_probe = read_i32(io_buf + 8);
    et_phase_mode = read_i32(io_buf + 12);
    if (n_steps < 0 || n_probe < 0 || (n_steps > 0 && (n_per_step < 1 || n_per_step > ET_BATCH))) {
        return fail(4, "bad header: need n_steps >= 0, n_probe >= 0, 1 <= n_per_step <= ET_BATCH");
    }
    uint64_t n_samples = n_steps > 0 ? (uint64_t)n_steps * (uint64_t)n_per_step : 0u;
    uint64_t expect = HEADER_BYTES + n_samples * SAMPLE_BYTES + (uint64_t)n_probe * (uint64_t)ET_INPUT_SIZE;
    if (expect != (uint64_t)(uint32_t)len) {
        return fail(4, IN_FILE " length does not match its header");
    }
    const uint8_t *samples = io_buf + HEADER_BYTES;
    const uint8_t *probes = samples + (uint32_t)n_samples * SAMPLE_BYTES;

    /* The serialized state goes into io_buf after the input. */
    uint32_t state_off = ((uint32_t)len + 7u) & ~7u;
    if (state_off > (uint32_t)ET_IO_BYTES || et_driver_state_size() > (uint32_t)ET_IO_BYTES - state_off) {
        return fail(3, "ET_IO_BYTES cannot hold the input file plus et_state_size() bytes");
    }
    uint8_t *state_buf = io_buf + state_off;
    uint32_t state_cap = (uint32_t)ET_IO_BYTES - state_off;

    if (et_driver_init() != 0) {
        return fail(5, "et_init failed");
    }
    out_fd = sh_open(OUT_FILE, SH_MODE_WB);
    if (out_fd < 0) {
        return fail(2, "cannot open " OUT_FILE " for writing");
    }

    for (int32_t step = 0; step < n_steps; step++) {
        /* Gather the step's samples: x's contiguous, labels apart. */
        const uint8_t *s = samples + (uint32_t)step * (uint32_t)n_per_step * SAMPLE_BYTES;
        for (int32_t i = 0; i < n_per_step; i++, s += SAMPLE_BYTES) {
            memcpy(batch_x + (uint32_t)i * (uint32_t)ET_INPUT_SIZE, s, ET_INPUT_SIZE);
            batch_y[i] = s[ET_INPUT_SIZE];
        }
        et_phase_marker = PHASE_PREDICT;
        for (int32_t i = 0; i < n_per_step; i++) {
            int rc = predict_and_emit(batch_x + (uint32_t)i * (uint32_t)ET_INPUT_SIZE);
            if (rc != 0) {
                return rc;
            }
        }
        et_phase_marker = PHASE_TRAIN;
        if (et_driver_step(batch_x, batch_y, (int)n_per_step) < 0) {
            return fail(7, "et_train_step failed");
        }
        int rc = probe_and_state(probes, n_probe, state_buf, state_cap);
        if (rc != 0) {
            return rc;
        }
    }
    if (n_steps == 0) {
        int rc = probe_and_state(probes, n_probe, state_buf, state_cap);
        if (rc != 0) {
            return rc;
        }
    }
    et_phase_marker = PHASE_SETUP;
    if (sh_close(out_fd) != 0) {
        out_fd = -1;
        return fail(2, "cannot close " OUT_FILE);
    }
    out_fd = -1;
    sh_write0("et firmware: ok, stack peak ");
    sh_write_int((int32_t)et_stack_peak_bytes());
    sh_write0(" bytes\n");
    return 0;
}
