/* The semihosting calls of export/target/semihost.h on a host (POSIX files and stdout), so that the
 * firmware driver main_target.c runs unchanged as a host program, with or without sanitizers:
 * the host check and the target check drive the generated C through the same code. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "semihost.h"

int sh_open(const char *path, int mode)
{
    return mode == SH_MODE_WB ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(path, O_RDONLY);
}

int sh_close(int fd)
{
    return close(fd) == 0 ? 0 : -1;
}

int32_t sh_read(int fd, void *buf, uint32_t len)
{
    uint32_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0) return -1;
        if (n == 0) break;
        done += (uint32_t)n;
    }
    return (int32_t)done;
}

int sh_write(int fd, const void *buf, uint32_t len)
{
    uint32_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n <= 0) return -1;
        done += (uint32_t)n;
    }
    return 0;
}

int32_t sh_flen(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (int32_t)st.st_size : -1;
}

void sh_write0(const char *s)
{
    fputs(s, stdout);
    fflush(stdout);
}

void sh_write_int(int32_t value)
{
    printf("%ld", (long)value);
    fflush(stdout);
}

void sh_write_hex(uint32_t value)
{
    printf("0x%08lx", (unsigned long)value);
    fflush(stdout);
}

void sh_exit(int status)
{
    exit(status);
}

/* The target measures its stack by painting it (startup.c); the host does not. */
uint32_t et_stack_peak_bytes(void)
{
    return 0;
}
