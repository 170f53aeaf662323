/*
 * qemu_plugin_api.h - declarations of the part of QEMU's TCG plugin C API (API version 1, as in
 * QEMU 7.2) that insn_count.c uses.
 *
 * Debian ships neither QEMU's own header (qemu-plugin.h) nor its plugins, so this header states
 * the few signatures we call. The symbols are resolved at load time against the running
 * qemu-system-* binary, which exports them; the plugin itself links against nothing.
 */
#ifndef EDGETRAIN_QEMU_PLUGIN_API_H
#define EDGETRAIN_QEMU_PLUGIN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ET_PLUGIN_EXPORT __attribute__((visibility("default")))

/* The plugin API version this plugin is written against; QEMU 7.2 accepts 0..1. */
#define ET_QEMU_PLUGIN_API_VERSION 1

/* Opaque id QEMU gives the plugin at install time. */
typedef uint64_t qemu_plugin_id_t;

/* What QEMU tells the plugin at install time (valid only during qemu_plugin_install). */
typedef struct qemu_info_t {
    const char *target_name; /* guest architecture, e.g. "arm" */
    struct {
        int min; /* oldest plugin API version QEMU accepts */
        int cur; /* newest plugin API version QEMU implements */
    } version;
    bool system_emulation; /* true for qemu-system-*, false for user mode */
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system; /* only meaningful with system_emulation */
    };
} qemu_info_t;

/* Opaque handles to a translation block and to one of its instructions, valid only during the
 * translation callback. */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

/* The only inline operation of API version 1: *ptr += imm (uint64_t, not atomic). */
enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

/* Exported by the plugin: the API version it was built for, and its entry point (0 = loaded). */
extern ET_PLUGIN_EXPORT int qemu_plugin_version;
ET_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

/* Provided by QEMU. */
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op, void *ptr,
                                                uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string); /* to QEMU's log: shown with `-d plugin` */

#endif /* EDGETRAIN_QEMU_PLUGIN_API_H */
