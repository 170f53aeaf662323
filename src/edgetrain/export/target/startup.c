/*
 * startup.c - reset and fault handling for edgetrain firmware on QEMU's mps2 boards (see mps2.ld).
 *
 * Reset_Handler: enable the FPU (when the build uses one), copy .data from flash to RAM, zero
 * .bss, paint the stack with a pattern, call main() and stop the emulator through
 * semihosting with main's return value as QEMU's exit status.
 *
 * Every other exception (NMI, HardFault, ..., any interrupt) is unexpected in this firmware: the
 * handler prints which one it was and the faulting pc, and exits with status 128 + the exception
 * number (HardFault: 131).
 *
 * Stack check: the reset handler paints the stack reservation (the top __stack_size bytes of RAM)
 * and as much again below it (a guard zone, down to the end of .bss at most) with a pattern.
 * et_stack_peak_bytes() reports the deepest stack use so far from the lowest overwritten word (a
 * lower bound if the stack went below the guard zone). If after main() that is more than
 * __stack_size (the reservation counted in RAM, see mps2.ld), it is reported and, if main returned
 * 0, the exit status becomes 120. Stack that a frame reserved but never wrote is not seen.
 * Painting costs about 3 instructions per painted word and each scan about 5 (for an 8 KiB stack:
 * some 35000 instructions in Reset_Handler and 30000 per et_stack_peak_bytes call by main), all
 * outside the model's functions; -DET_STACK_CHECK=0 leaves them out (et_stack_peak_bytes() then
 * returns 0).
 */
#include <stdint.h>

#include "semihost.h"

/* Symbols from mps2.ld. */
extern uint32_t __data_load__;
extern uint32_t __data_start__;
extern uint32_t __data_end__;
extern uint32_t __bss_start__;
extern uint32_t __bss_end__;
extern uint32_t __stack_top__;
extern uint32_t __stack_size; /* an absolute symbol: its address is the reservation in bytes */

/* Exit status used when main returned 0 but used more stack than reserved. */
#define EXIT_STACK_OVERFLOW 120
#define STACK_PAINT 0x5AC3A55Cu
#ifndef ET_STACK_CHECK
#define ET_STACK_CHECK 1
#endif

int main(void);
void Reset_Handler(void);
void et_fault_entry(void);
void et_fault_report(const uint32_t *frame, uint32_t exception);
uint32_t et_stack_peak_bytes(void);

typedef void (*vector_t)(void);

/*
 * The vector table: initial stack pointer, reset, then the 14 system exceptions and the 32
 * external interrupts the mps2-an385/an386/an500 NVIC has. All but reset go to et_fault_entry.
 */
#define N_VECTORS (16 + 32)
#define F et_fault_entry
__attribute__((section(".vectors"), used)) const vector_t et_vectors[N_VECTORS] = {
    (vector_t)&__stack_top__, Reset_Handler,
    F, F, F, F, F, F, F, F, F, F, F, F, F, F,                /* exceptions 2..15 */
    F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F,          /* IRQ 0..15 */
    F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F,          /* IRQ 16..31 */
};
#undef F

/*
 * Take the main stack pointer (where the core stacked r0-r3, r12, lr, pc, xpsr; this firmware
 * never switches to the process stack) and the active exception number, and report them. Naked
 * and written with Thumb-1 instructions only, so it builds for ARMv6-M as well.
 */
__attribute__((naked)) void et_fault_entry(void)
{
    __asm__ volatile(
        "mrs r0, msp\n"
        "mrs r1, ipsr\n"
        "ldr r2, =et_fault_report\n"
        "bx r2\n");
}

static const char *exception_name(uint32_t n)
{
    switch (n) {
    case 2: return "NMI";
    case 3: return "HardFault";
    case 4: return "MemManage";
    case 5: return "BusFault";
    case 6: return "UsageFault";
    case 11: return "SVCall";
    case 12: return "DebugMonitor";
    case 14: return "PendSV";
    case 15: return "SysTick";
    default: return n >= 16 ? "IRQ" : "reserved exception";
    }
}

void et_fault_report(const uint32_t *frame, uint32_t exception)
{
    exception &= 0x1FFu; /* IPSR holds the exception number in bits 0..8 */
    sh_write0("edgetrain firmware: unexpected ");
    sh_write0(exception_name(exception));
    sh_write0(" (exception ");
    sh_write_int((int32_t)exception);
    sh_write0("), pc=");
    sh_write_hex(frame[6]);
    sh_write0(" lr=");
    sh_write_hex(frame[5]);
    sh_write0("\n");
    sh_exit(128 + (int)(exception < 127u ? exception : 127u));
}

static uint32_t *current_sp(void)
{
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Lowest painted word: a guard zone of __stack_size bytes below the reservation, not below .bss. */
static uint32_t *paint_start(void)
{
    uintptr_t top = (uintptr_t)&__stack_top__;
    uintptr_t size = (uintptr_t)&__stack_size;
    uintptr_t bss_end = (uintptr_t)&__bss_end__;
    uintptr_t start = top - bss_end > 2u * size ? top - 2u * size : bss_end;
    return (uint32_t *)start;
}

uint32_t et_stack_peak_bytes(void)
{
    if (!ET_STACK_CHECK) {
        return 0;
    }
    /* The lowest word that no longer holds the paint pattern is the deepest the stack went. */
    const uint32_t *p = paint_start();
    const uint32_t *top = &__stack_top__;
    while (p < top && *p == STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)top - (uintptr_t)p);
}

void Reset_Handler(void)
{
#if defined(__ARM_FP)
    /* CPACR: full access to coprocessors 10 and 11 (the FPU) before any floating-point code. */
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= 0xFu << 20;
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    const uint32_t *src = &__data_load__;
    for (uint32_t *dst = &__data_start__; dst < &__data_end__; dst++) {
        *dst = *src++;
    }
    for (uint32_t *dst = &__bss_start__; dst < &__bss_end__; dst++) {
        *dst = 0;
    }
    /* Paint the stack and guard zone below this function's frame, for et_stack_peak_bytes(). */
    if (ET_STACK_CHECK) {
        uint32_t *sp = current_sp();
        for (uint32_t *dst = paint_start(); dst < sp; dst++) {
            *(volatile uint32_t *)dst = STACK_PAINT;
        }
    }

    int status = main();

    uint32_t peak = et_stack_peak_bytes();
    if (peak > (uint32_t)(uintptr_t)&__stack_size) {
        sh_write0("edgetrain firmware: stack overflow: ");
        sh_write_int((int32_t)peak);
        sh_write0(" bytes of stack used, __stack_size reserves ");
        sh_write_int((int32_t)(uintptr_t)&__stack_size);
        sh_write0("\n");
        if (status == 0) {
            status = EXIT_STACK_OVERFLOW;
        }
    }
    sh_exit(status);
}
