/*
 * semihost.c - ARM semihosting calls (see semihost.h).
 *
 * Every call is `bkpt 0xab` with the operation number in r0 and the argument in r1; for most
 * operations r1 points to a block of 32-bit words. The host writes the result into r0 and may
 * read or write guest memory through the pointers it was given, hence the "memory" clobber.
 */
#include "semihost.h"

/* Operation numbers from the semihosting specification. */
enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_FLEN = 0x0C,
    SYS_EXIT = 0x18,
    SYS_EXIT_EXTENDED = 0x20
};

/* Reason codes for SYS_EXIT / SYS_EXIT_EXTENDED. */
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define ADP_STOPPED_RUNTIME_ERROR_UNKNOWN 0x20023u

static int32_t sh_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

static uint32_t c_strlen(const char *s)
{
    uint32_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return n;
}

int sh_open(const char *path, int mode)
{
    uint32_t block[3];
    block[0] = (uint32_t)(uintptr_t)path;
    block[1] = (uint32_t)mode;
    block[2] = c_strlen(path); /* length without the terminating NUL */
    int32_t fd = sh_call(SYS_OPEN, block);
    return fd < 0 ? -1 : (int)fd;
}

int sh_close(int fd)
{
    uint32_t block[1];
    block[0] = (uint32_t)fd;
    return sh_call(SYS_CLOSE, block) == 0 ? 0 : -1;
}

int32_t sh_read(int fd, void *buf, uint32_t len)
{
    uint32_t block[3];
    block[0] = (uint32_t)fd;
    block[1] = (uint32_t)(uintptr_t)buf;
    block[2] = len;
    /* The host returns the number of bytes it did NOT read. */
    int32_t not_read = sh_call(SYS_READ, block);
    if (not_read < 0 || (uint32_t)not_read > len) {
        return -1;
    }
    return (int32_t)(len - (uint32_t)not_read);
}

int sh_write(int fd, const void *buf, uint32_t len)
{
    uint32_t block[3];
    block[0] = (uint32_t)fd;
    block[1] = (uint32_t)(uintptr_t)buf;
    block[2] = len;
    /* The host returns the number of bytes it did NOT write. */
    return sh_call(SYS_WRITE, block) == 0 ? 0 : -1;
}

int32_t sh_flen(int fd)
{
    uint32_t block[1];
    block[0] = (uint32_t)fd;
    int32_t n = sh_call(SYS_FLEN, block);
    return n < 0 ? -1 : n;
}

void sh_write0(const char *s)
{
    sh_call(SYS_WRITE0, s);
}

void sh_write_int(int32_t value)
{
    char buf[12];
    int i = (int)sizeof buf - 1;
    /* Work on the magnitude as unsigned so that INT32_MIN does not overflow. */
    uint32_t mag = value < 0 ? 0u - (uint32_t)value : (uint32_t)value;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + mag % 10u);
        mag /= 10u;
    } while (mag != 0u);
    if (value < 0) {
        buf[--i] = '-';
    }
    sh_write0(&buf[i]);
}

void sh_write_hex(uint32_t value)
{
    static const char digits[] = "0123456789abcdef";
    char buf[11];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 8; i++) {
        buf[2 + i] = digits[(value >> (28 - 4 * i)) & 0xFu];
    }
    buf[10] = '\0';
    sh_write0(buf);
}

void sh_exit(int status)
{
    if (status != 0 && (status & 0xFF) == 0) {
        status = 0xFF; /* the host keeps 8 bits: do not let a failure such as 256 read as success */
    }
    if (status != 0) {
        /*
         * On AArch32, plain SYS_EXIT takes the reason code itself in r1 and has no room for a
         * status: QEMU maps ApplicationExit to 0 and every other reason to 1. SYS_EXIT_EXTENDED
         * takes a pointer to {reason, subcode} and QEMU exits with the subcode as its status.
         */
        uint32_t block[2];
        block[0] = ADP_STOPPED_APPLICATION_EXIT;
        block[1] = (uint32_t)status;
        sh_call(SYS_EXIT_EXTENDED, block);
        /* Only reached on a host without SYS_EXIT_EXTENDED: still report failure. */
        sh_call(SYS_EXIT, (const void *)(uintptr_t)ADP_STOPPED_RUNTIME_ERROR_UNKNOWN);
    } else {
        sh_call(SYS_EXIT, (const void *)(uintptr_t)ADP_STOPPED_APPLICATION_EXIT);
    }
    for (;;) {
        /* Not reached under QEMU; on a debugger that ignores the exit, stay here. */
    }
}
