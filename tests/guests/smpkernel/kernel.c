/*
 * smpkernel: a freestanding multi-vCPU C kernel for debugging with gdb (issues 13, 14).
 *
 * vCPU 0 (kmain) prints a banner on port 0xE9, starts every AP through the vmstub port
 * 0xEB and waits until they are all online, then runs each of the things the real-gdb
 * tests and the bench watch or step over, once, in this order:
 *   stack_work()  a local variable on its stack, written a few times (watch -l);
 *   rep_copy()    an inline-asm `rep movsb` into the global copy_dst (watch);
 *   loop_work()   one source line of exactly LOOP_ITERATIONS iterations (next, until);
 * and then runs loop_work() forever (so the loop line can be reached again and again).
 * Every AP spins in ap_spin() forever; vCPU 2's spin (only) calls set_shared_flag(),
 * which writes and reads shared_flag. So with 4 vCPUs all four are always busy.
 *
 * Under QEMU (Multiboot, one CPU) the same kmain runs with a vCPU count of 1.
 * Interrupts stay off throughout: no IDT, no timer.
 *
 * Keep the names below (tests/guests/test_smpkernel.py, tests/e2e/test_smp_gdb.py and
 * bench/ use them) and keep each commented line one line.
 */
#include <stdint.h>
#include "smp.h"

#define NOINLINE __attribute__((noinline))
#define LOOP_ITERATIONS 1000
#define FLAG_WRITER 2                    /* the only vCPU that touches shared_flag */

volatile uint64_t shared_flag;           /* written and read by vCPU FLAG_WRITER only */
volatile uint64_t flag_checks;           /* how often it read back what it wrote */
volatile uint64_t cpus_online;           /* vCPUs in C so far (vCPU 0 included) */
volatile uint64_t spins[MAX_CPUS];       /* each vCPU's busy-loop passes */
volatile uint64_t loop_result;           /* loop_work's last sum */
volatile uint64_t loop_runs;             /* loop_work's calls */
volatile uint64_t stack_result;          /* stack_work's result */
volatile uint64_t loop_factor = 3;       /* read each time: the loop is not folded */
uint8_t copy_dst[64];                    /* rep_copy's destination */
const char copy_src[64] = "smpkernel: copied by rep movsb";
char stacks[MAX_CPUS][1 << STACK_SHIFT] __attribute__((aligned(16)));

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void puts(const char *s)
{
    while (*s)
        outb(PORT_CONSOLE, (uint8_t)*s++);
}

static void putdec(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

/* The only write of shared_flag, then a read of it, on one line: a watchpoint's report
 * (after the accessing instruction) names this line. */
NOINLINE void set_shared_flag(uint64_t value)
{
    shared_flag = value; flag_checks += (shared_flag == value);  /* FLAG_LINE */
}

/* A local on the stack, written four times (volatile: it stays in memory). */
NOINLINE uint64_t stack_work(uint64_t seed)
{
    volatile uint64_t local = seed;      /* LOCAL_1 */
    local = local * 3 + 1;               /* LOCAL_2 */
    local = local ^ 0x55;                /* LOCAL_3 */
    local = local + 7;                   /* LOCAL_4 */
    return local;
}

/* memcpy as a guest's own string instruction: one `rep movsb`. */
NOINLINE void rep_copy(void *dst, const void *src, uint64_t n)
{
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");  /* REP_LINE */
}

/* The loop line: exactly LOOP_ITERATIONS passes on one source line. */
NOINLINE uint64_t loop_work(uint64_t k)
{
    volatile uint64_t acc = 0;           /* in memory: the loop is not folded */
    uint64_t i;
    for (i = 0; i < LOOP_ITERATIONS; i++) acc += i * k;  /* LOOP_LINE */
    loop_result = acc;                   /* AFTER_LOOP */
    loop_runs++;
    return acc;
}

/* Each AP's busy loop (vCPU 0 runs loop_work forever instead). */
NOINLINE void ap_spin(uint64_t cpu)
{
    uint64_t n = 0;
    for (;;) {
        spins[cpu]++;
        if (cpu == FLAG_WRITER)
            set_shared_flag(++n);
    }
}

extern char ap_entry[];

static void start_aps(uint64_t count)
{
    for (uint64_t cpu = 1; cpu < count && cpu < MAX_CPUS; cpu++)
        __asm__ volatile("outl %0, %1" : : "a"((uint32_t)cpu), "Nd"(PORT_AP_START),
                         "b"(ap_entry));
}

NOINLINE void kmain(uint64_t count, uint64_t ram)
{
    uint64_t want = count < MAX_CPUS ? count : MAX_CPUS;
    puts("smpkernel: vCPU 0 of ");
    putdec(count);
    puts(", ");
    putdec(ram >> 20);
    puts(" MiB\n");
    cpus_online = 1;
    start_aps(count);
    while (cpus_online < want)
        __asm__ volatile("pause");
    puts("smpkernel: ");
    putdec(want);
    puts(" vCPU(s) online\n");
    stack_result = stack_work(5);
    rep_copy(copy_dst, copy_src, sizeof copy_src);
    loop_work(loop_factor);              /* KMAIN_LOOP */
    puts("smpkernel: loop ");
    putdec(loop_result);
    puts("\n");
    for (;;) {
        spins[0]++;
        loop_work(loop_factor);
    }
}

/* Every vCPU's first C code (boot.S, on its own stack); never returns. */
NOINLINE void cpu_main(uint64_t cpu, uint64_t count, uint64_t ram)
{
    if (cpu == 0)
        kmain(count, ram);
    __atomic_fetch_add(&cpus_online, 1, __ATOMIC_SEQ_CST);
    ap_spin(cpu);
}
