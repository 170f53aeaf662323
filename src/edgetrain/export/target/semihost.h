/*
 * semihost.h - the few ARM semihosting calls the edgetrain firmware needs.
 *
 * Semihosting lets a program on an emulated (or debugger-attached) Cortex-M use the host's
 * files and console: the program puts an operation number in r0, a pointer to an argument
 * block (or a single argument) in r1, and executes `bkpt 0xab`; the host (here QEMU, started
 * with `-semihosting-config enable=on,target=native`) performs the operation and puts the
 * result in r0. File names are resolved relative to QEMU's working directory.
 *
 * Reference: ARM "Semihosting for AArch32 and AArch64", version 2.0.
 */
#ifndef EDGETRAIN_SEMIHOST_H
#define EDGETRAIN_SEMIHOST_H

#include <stdint.h>

/* Open modes for sh_open (the semihosting mode numbers for fopen's "rb" and "wb"). */
#define SH_MODE_RB 1
#define SH_MODE_WB 5

/* Open `path`; returns a file handle (>= 0) or -1 on error. `mode` is SH_MODE_RB or SH_MODE_WB. */
int sh_open(const char *path, int mode);

/* Close a handle from sh_open; returns 0 on success, -1 on error. */
int sh_close(int fd);

/* Read up to `len` bytes; returns the number of bytes read (0 at end of file) or -1 on error. */
int32_t sh_read(int fd, void *buf, uint32_t len);

/* Write `len` bytes; returns 0 if all were written, -1 otherwise. */
int sh_write(int fd, const void *buf, uint32_t len);

/* Length of an open file in bytes, or -1 on error. */
int32_t sh_flen(int fd);

/* Write a NUL-terminated string to the host's console (QEMU: its stdout/stderr). */
void sh_write0(const char *s);

/* Write `value` in decimal to the console (no newline). */
void sh_write_int(int32_t value);

/* Write `value` as 0x%08x to the console (no newline). */
void sh_write_hex(uint32_t value);

/* Stop the program; QEMU exits with `status` (0..255 as a process exit status). Never returns. */
void sh_exit(int status) __attribute__((noreturn));

#endif /* EDGETRAIN_SEMIHOST_H */
