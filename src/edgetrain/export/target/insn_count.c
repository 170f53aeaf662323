/*
 * insn_count.c - QEMU TCG plugin: count executed guest instructions per function symbol.
 *
 * Usage (QEMU 7.2):
 *     qemu-system-arm ... -plugin /path/insn_count.so,symbols=SYMS,out=COUNTS
 *
 * SYMS is a text file with one function per line, "START_HEX SIZE_HEX NAME" (the format of
 * `arm-none-eabi-nm -S`; bit 0 of START, the Thumb bit, is ignored). Each executed instruction
 * counts for the one function whose [START, START + SIZE) holds its address (exclusive counts:
 * a callee's instructions are not added to its caller), or for "[other]" when none does.
 * Overlapping ranges (aliases) keep the first one in address order.
 *
 * At exit COUNTS gets one line "NAME COUNT" per function that executed at least one
 * instruction, then "[other] COUNT" and "[total] COUNT".
 *
 * Counting is done with inline adds (no helper call per instruction): when QEMU translates a
 * block, each instruction is looked up once (binary search) and gets an inline "+= 1" on its
 * function's counter. Instructions skipped by a failed IT/condition still count as executed.
 *
 * Build: gcc -std=gnu11 -shared -fPIC -O2 -o insn_count.so insn_count.c
 */
#define _POSIX_C_SOURCE 200809L /* getline, strndup */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

ET_PLUGIN_EXPORT int qemu_plugin_version = ET_QEMU_PLUGIN_API_VERSION;

struct range {
    uint64_t start;
    uint64_t end; /* exclusive */
    char *name;
};

static struct range *ranges;
static size_t n_ranges;
static uint64_t *counts; /* n_ranges + 1 counters; the last is [other] */
static char *out_path;

static void report(const char *msg)
{
    fprintf(stderr, "insn_count plugin: %s\n", msg);
}

static int by_start(const void *a, const void *b)
{
    const struct range *x = a;
    const struct range *y = b;
    if (x->start != y->start) {
        return x->start < y->start ? -1 : 1;
    }
    return x->end > y->end ? -1 : (x->end < y->end ? 1 : 0); /* larger range first */
}

/* Read "START SIZE NAME" lines; returns 0 on success. */
static int load_symbols(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        report("cannot open the symbols file");
        return -1;
    }
    size_t cap = 256;
    ranges = malloc(cap * sizeof *ranges);
    char *line = NULL;
    size_t line_cap = 0;
    while (ranges != NULL && getline(&line, &line_cap, f) >= 0) {
        char *p = line;
        char *rest;
        uint64_t start = strtoull(p, &rest, 16);
        if (rest == p) {
            continue; /* blank or malformed line */
        }
        p = rest;
        uint64_t size = strtoull(p, &rest, 16);
        if (rest == p || size == 0) {
            continue;
        }
        p = rest + strspn(rest, " \t");
        size_t len = strcspn(p, "\r\n");
        if (len == 0) {
            continue;
        }
        if (n_ranges == cap) {
            cap *= 2;
            struct range *grown = realloc(ranges, cap * sizeof *ranges);
            if (grown == NULL) {
                break;
            }
            ranges = grown;
        }
        struct range *r = &ranges[n_ranges];
        r->start = start & ~(uint64_t)1; /* Thumb bit */
        r->end = r->start + size;
        r->name = strndup(p, len);
        if (r->name == NULL) {
            break;
        }
        n_ranges++;
    }
    free(line);
    fclose(f);
    if (ranges == NULL) {
        report("out of memory");
        return -1;
    }
    qsort(ranges, n_ranges, sizeof *ranges, by_start);
    /* Drop ranges that overlap an earlier one, so that lookups are unambiguous. */
    size_t kept = 0;
    for (size_t i = 0; i < n_ranges; i++) {
        if (kept > 0 && ranges[i].start < ranges[kept - 1].end) {
            free(ranges[i].name);
            continue;
        }
        ranges[kept++] = ranges[i];
    }
    n_ranges = kept;
    counts = calloc(n_ranges + 1, sizeof *counts);
    if (counts == NULL) {
        report("out of memory");
        return -1;
    }
    return 0;
}

/* Index of the range holding addr, or n_ranges ([other]). */
static size_t lookup(uint64_t addr)
{
    size_t lo = 0;
    size_t hi = n_ranges; /* first range with start > addr is in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ranges[mid].start <= addr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo > 0 && addr < ranges[lo - 1].end) {
        return lo - 1;
    }
    return n_ranges;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t k = lookup(qemu_plugin_insn_vaddr(insn));
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &counts[k], 1);
    }
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    FILE *f = fopen(out_path, "w");
    if (f == NULL) {
        report("cannot write the output file");
        return;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < n_ranges; i++) {
        total += counts[i];
        if (counts[i] != 0) {
            fprintf(f, "%s %" PRIu64 "\n", ranges[i].name, counts[i]);
        }
    }
    total += counts[n_ranges];
    fprintf(f, "[other] %" PRIu64 "\n[total] %" PRIu64 "\n", counts[n_ranges], total);
    if (fclose(f) != 0) {
        report("error while writing the output file");
    }
    char msg[64];
    snprintf(msg, sizeof msg, "insn_count: %" PRIu64 " instructions\n", total);
    qemu_plugin_outs(msg);
}

ET_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    const char *symbols = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "symbols=", 8) == 0) {
            symbols = argv[i] + 8;
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = argv[i] + 4; /* argv stays valid while the plugin is loaded */
        } else {
            fprintf(stderr, "insn_count plugin: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (symbols == NULL || out_path == NULL) {
        report("usage: -plugin insn_count.so,symbols=FILE,out=FILE");
        return -1;
    }
    if (load_symbols(symbols) != 0) {
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
