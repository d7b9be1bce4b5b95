/*
 * kernel.c - mbkernel, a small Multiboot v1 test kernel for the PC platform, also built as
 * a Multiboot2 and a PVH kernel (build.sh: BOOT_MULTIBOOT2, BOOT_PVH; only boot_memory()
 * and the banner differ, and the boot header in boot.S).
 *
 * What a hobby OS does first: its own GDT and IDT, the 8259A PIC pair remapped to vectors
 * 0x20-0x2F, the 8254 PIT at 100 Hz on IRQ0, polled 16550 output on COM1, the VGA text
 * buffer, and the memory sizes from the Multiboot info. The serial output is deterministic
 * (no tick counts, no addresses), and the kernel ends by writing to QEMU's isa-debug-exit
 * port (0xF4), so a run can be compared byte for byte between QEMU and another VMM.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#if defined(BOOT_MULTIBOOT2)
#define BOOT_PROTOCOL "Multiboot2"
#elif defined(BOOT_PVH)
#define BOOT_PROTOCOL "PVH"
#else
#define BOOT_PROTOCOL "Multiboot v1"
#endif

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MULTIBOOT_INFO_MEMORY      (1u << 0)
#define MULTIBOOT2_BOOTLOADER_MAGIC 0x36D76289
#define MULTIBOOT2_TAG_END         0
#define MULTIBOOT2_TAG_BASIC_MEMINFO 4
#define XEN_HVM_START_MAGIC_VALUE  0x336ec578
#define E820_RAM                   1

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xA0
#define PIC2_DATA 0xA1
#define PIC_EOI   0x20
#define IRQ_BASE  0x20                  /* IRQ0-7 -> 0x20-0x27, IRQ8-15 -> 0x28-0x2F */

#define PIT_CH0   0x40
#define PIT_CMD   0x43
#define PIT_HZ    1193182u
#define TIMER_HZ  100u
#define TICKS_WANTED 10u

#define COM1      0x3F8
#define UART_LSR_THRE 0x20              /* transmitter holding register empty */

#define VGA_TEXT  ((volatile uint16_t *)0xB8000)
#define VGA_COLS  80
#define VGA_ROWS  25
#define VGA_ATTR  0x0700                /* light grey on black */

#define DEBUG_EXIT_PORT 0xF4            /* QEMU -device isa-debug-exit,iobase=0xf4 */
#define EXIT_OK   0x10                  /* QEMU exit status (0x10 << 1) | 1 = 33 */
#define EXIT_FAIL 0x11                  /* QEMU exit status (0x11 << 1) | 1 = 35 */

#define NFIB 24

struct multiboot_info {                 /* the fields we read; the rest is not used */
    uint32_t flags;
    uint32_t mem_lower;                 /* KiB below 1 MiB */
    uint32_t mem_upper;                 /* KiB above 1 MiB, up to the first hole */
};

struct multiboot2_tag {                 /* header of each boot information tag */
    uint32_t type;
    uint32_t size;                      /* the next tag is at the next 8-byte boundary */
};

struct multiboot2_tag_basic_meminfo {   /* type 4 */
    uint32_t type, size;
    uint32_t mem_lower, mem_upper;      /* KiB, as Multiboot v1's */
};

struct hvm_start_info {                 /* Xen's arch-x86/hvm/start_info.h */
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;              /* version >= 1 */
    uint32_t memmap_entries;            /* version >= 1 */
    uint32_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;                      /* E820 types */
    uint32_t reserved;
};

struct trap_frame {                     /* what exc_common in boot.S pushed */
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;   /* pushal */
    uint32_t vector, error;
    uint32_t eip, cs, eflags;           /* pushed by the CPU */
};

struct idt_entry {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t zero;
    uint8_t type_attr;
    uint16_t offset_hi;
} __attribute__((packed));

struct dtr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

/* boot.S */
extern void (*const exc_stubs[32])(void);
void irq0_entry(void);
void irq_spurious(void);

void kmain(uint32_t magic, const void *mbi);
void timer_irq(void);
void exception(const struct trap_frame *f);
void serial_putc(char c);
uint32_t work(uint32_t n);

volatile uint32_t ticks;                /* timer interrupts since sti */
uint32_t fib[NFIB];                     /* filled by work() */

static const uint64_t gdt[3] = {
    0,
    0x00CF9A000000FFFFull,              /* 0x08: ring 0 code, base 0, 4 GiB, 32-bit */
    0x00CF92000000FFFFull,              /* 0x10: ring 0 data, base 0, 4 GiB */
};
static struct idt_entry idt[256];
static unsigned vga_row, vga_col;

/* ---- port I/O ----------------------------------------------------------------------- */

static inline void outb(uint16_t port, uint8_t val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t val;
    __asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

static inline void io_wait(void)
{
    outb(0x80, 0);                      /* POST port: a short delay for the old PIC */
}

static __attribute__((noreturn)) void qemu_exit(uint8_t code)
{
    outb(DEBUG_EXIT_PORT, code);
    for (;;)                            /* no isa-debug-exit device: just stop */
        __asm__ volatile("cli; hlt");
}

/* ---- console: COM1 and VGA text ------------------------------------------------------ */

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);               /* IER: no interrupts */
    outb(COM1 + 3, 0x80);               /* LCR: DLAB on */
    outb(COM1 + 0, 0x01);               /* divisor 1 = 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);               /* LCR: DLAB off, 8N1 */
    outb(COM1 + 2, 0xC7);               /* FCR: FIFOs on and cleared, 14-byte threshold */
    outb(COM1 + 4, 0x03);               /* MCR: DTR, RTS */
}

__attribute__((noinline)) void serial_putc(char c)
{
    while (!(inb(COM1 + 5) & UART_LSR_THRE))
        ;
    outb(COM1, (uint8_t)c);
}

static void vga_clear(void)
{
    for (unsigned i = 0; i < VGA_COLS * VGA_ROWS; i++)
        VGA_TEXT[i] = VGA_ATTR | ' ';
    vga_row = vga_col = 0;
}

static void vga_putc(char c)
{
    if (c == '\n') {
        vga_col = 0;
        vga_row++;
    } else {
        VGA_TEXT[vga_row * VGA_COLS + vga_col] = VGA_ATTR | (uint8_t)c;
        if (++vga_col == VGA_COLS) {
            vga_col = 0;
            vga_row++;
        }
    }
    if (vga_row == VGA_ROWS) {          /* scroll up one line */
        for (unsigned i = 0; i < VGA_COLS * (VGA_ROWS - 1); i++)
            VGA_TEXT[i] = VGA_TEXT[i + VGA_COLS];
        for (unsigned i = 0; i < VGA_COLS; i++)
            VGA_TEXT[(VGA_ROWS - 1) * VGA_COLS + i] = VGA_ATTR | ' ';
        vga_row--;
    }
}

static void putc(char c)
{
    serial_putc(c);
    vga_putc(c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void putu(uint32_t v, unsigned base)
{
    char buf[11];
    int i = 0;
    do {
        buf[i++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (i)
        putc(buf[--i]);
}

/* %s %c %u %x %% only: all this kernel needs. */
static void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putc(*fmt);
            continue;
        }
        switch (*++fmt) {
        case 's': puts(va_arg(ap, const char *)); break;
        case 'c': putc((char)va_arg(ap, int)); break;
        case 'u': putu(va_arg(ap, uint32_t), 10); break;
        case 'x': putu(va_arg(ap, uint32_t), 16); break;
        case '%': putc('%'); break;
        default: return;                /* also a '%' at the very end */
        }
    }
    va_end(ap);
}

/* ---- descriptor tables, PIC, PIT ---------------------------------------------------- */

static void gdt_init(void)
{
    struct dtr gdtr = { sizeof gdt - 1, (uint32_t)gdt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp %1, $1f\n"
                     "1:\n\t"
                     "movw %w2, %%ds\n\t"
                     "movw %w2, %%es\n\t"
                     "movw %w2, %%fs\n\t"
                     "movw %w2, %%gs\n\t"
                     "movw %w2, %%ss"
                     : : "m"(gdtr), "i"(KERNEL_CS), "r"(KERNEL_DS) : "memory");
}

static void idt_set(unsigned vec, void (*handler)(void))
{
    uint32_t addr = (uint32_t)handler;
    idt[vec].offset_lo = addr & 0xFFFF;
    idt[vec].selector = KERNEL_CS;
    idt[vec].zero = 0;
    idt[vec].type_attr = 0x8E;          /* present, ring 0, 32-bit interrupt gate */
    idt[vec].offset_hi = addr >> 16;
}

static void idt_init(void)
{
    for (unsigned v = 0; v < 32; v++)
        idt_set(v, exc_stubs[v]);
    for (unsigned v = IRQ_BASE; v < IRQ_BASE + 16; v++)
        idt_set(v, irq_spurious);
    idt_set(IRQ_BASE + 0, irq0_entry);
    struct dtr idtr = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

static void pic_remap(void)
{
    outb(PIC1_CMD, 0x11);  io_wait();   /* ICW1: edge triggered, cascade, ICW4 follows */
    outb(PIC2_CMD, 0x11);  io_wait();
    outb(PIC1_DATA, IRQ_BASE);     io_wait();   /* ICW2: vector base */
    outb(PIC2_DATA, IRQ_BASE + 8); io_wait();
    outb(PIC1_DATA, 0x04); io_wait();   /* ICW3: slave on IRQ2 */
    outb(PIC2_DATA, 0x02); io_wait();   /*       slave identity 2 */
    outb(PIC1_DATA, 0x01); io_wait();   /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01); io_wait();
    outb(PIC1_DATA, 0xFE);              /* OCW1: only IRQ0 unmasked */
    outb(PIC2_DATA, 0xFF);
}

static void pit_init(uint32_t hz)
{
    uint16_t divisor = (uint16_t)((PIT_HZ + hz / 2) / hz);
    outb(PIT_CMD, 0x34);                /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(PIT_CH0, divisor & 0xFF);
    outb(PIT_CH0, divisor >> 8);
}

/* ---- interrupt handlers (called from boot.S) ---------------------------------------- */

void timer_irq(void)
{
    ticks++;
    outb(PIC1_CMD, PIC_EOI);
}

void exception(const struct trap_frame *f)
{
    kprintf("exception %u, error code 0x%x, at eip 0x%x\n", f->vector, f->error, f->eip);
    qemu_exit(EXIT_FAIL);
}

/* ---- the boot information: mem_lower and mem_upper, in KiB ---------------------------- */

#if defined(BOOT_MULTIBOOT2)

/* The basic memory information tag among the boot information's tags. */
static int boot_memory(uint32_t magic, const void *info, uint32_t *lower, uint32_t *upper)
{
    if (magic != MULTIBOOT2_BOOTLOADER_MAGIC) {
        kprintf("bad multiboot2 magic 0x%x\n", magic);
        return 0;
    }
    const uint8_t *p = (const uint8_t *)info + 8;   /* after total_size and reserved */
    const uint8_t *end = (const uint8_t *)info + *(const uint32_t *)info;
    while (p + sizeof(struct multiboot2_tag) <= end) {
        const struct multiboot2_tag *tag = (const void *)p;
        if (tag->type == MULTIBOOT2_TAG_END || tag->size < sizeof *tag)
            break;
        if (tag->type == MULTIBOOT2_TAG_BASIC_MEMINFO) {
            const struct multiboot2_tag_basic_meminfo *m = (const void *)tag;
            *lower = m->mem_lower;
            *upper = m->mem_upper;
            return 1;
        }
        p += (tag->size + 7) & ~7u;
    }
    kprintf("no memory info from the boot loader\n");
    return 0;
}

#elif defined(BOOT_PVH)

/* KiB of RAM (E820 type 1, entries in any order) that runs on without a gap from start,
   counted up to limit: what a Multiboot loader reports as mem_lower and mem_upper. */
static uint32_t ram_from(const struct hvm_memmap_table_entry *map, uint32_t n,
                         uint64_t start, uint64_t limit)
{
    uint64_t end = start;
    for (uint32_t pass = 0; pass < n; pass++) {
        uint64_t was = end;
        for (uint32_t i = 0; i < n; i++)
            if (map[i].type == E820_RAM && map[i].addr <= end &&
                map[i].addr + map[i].size > end)
                end = map[i].addr + map[i].size;
        if (end == was)
            break;
    }
    return (uint32_t)(((end < limit ? end : limit) - start) >> 10);
}

/* PVH passes no magic in EAX: it is the start info's first field. */
static int boot_memory(uint32_t magic, const void *info, uint32_t *lower, uint32_t *upper)
{
    const struct hvm_start_info *si = info;
    (void)magic;
    if (si->magic != XEN_HVM_START_MAGIC_VALUE) {
        kprintf("bad PVH start info magic 0x%x\n", si->magic);
        return 0;
    }
    if (si->version < 1 || si->memmap_entries == 0) {
        kprintf("no memory info from the boot loader\n");
        return 0;
    }
    const struct hvm_memmap_table_entry *map =
        (const void *)(uintptr_t)si->memmap_paddr;
    *lower = ram_from(map, si->memmap_entries, 0, 0xA0000);              /* below 640 KiB */
    *upper = ram_from(map, si->memmap_entries, 0x100000, 0x100000000ull); /* from 1 MiB */
    return 1;
}

#else

static int boot_memory(uint32_t magic, const void *info, uint32_t *lower, uint32_t *upper)
{
    const struct multiboot_info *mbi = info;
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        kprintf("bad multiboot magic 0x%x\n", magic);
        return 0;
    }
    if (!(mbi->flags & MULTIBOOT_INFO_MEMORY)) {
        kprintf("no memory info from the boot loader\n");
        return 0;
    }
    *lower = mbi->mem_lower;
    *upper = mbi->mem_upper;
    return 1;
}

#endif

/* ---- the kernel ---------------------------------------------------------------------- */

/* The first n Fibonacci numbers into fib[]; returns their sum. */
__attribute__((noinline)) uint32_t work(uint32_t n)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i < n && i < NFIB; i++) {
        fib[i] = i < 2 ? i : fib[i - 1] + fib[i - 2];
        sum += fib[i];
    }
    return sum;
}

/* mbi: the boot information (multiboot_info, Multiboot2's tags or hvm_start_info). */
void kmain(uint32_t magic, const void *mbi)
{
    uint32_t mem_lower, mem_upper;

    serial_init();
    vga_clear();
    kprintf("mbkernel: " BOOT_PROTOCOL " test kernel\n");

    if (!boot_memory(magic, mbi, &mem_lower, &mem_upper))
        qemu_exit(EXIT_FAIL);
    kprintf("memory: lower %u KiB, upper %u KiB\n", mem_lower, mem_upper);

    gdt_init();
    idt_init();
    pic_remap();
    pit_init(TIMER_HZ);
    kprintf("timer: %u Hz, waiting for %u ticks\n", TIMER_HZ, TICKS_WANTED);

    for (;;) {
        __asm__ volatile("cli" ::: "memory");
        if (ticks >= TICKS_WANTED)
            break;
        __asm__ volatile("sti; hlt" ::: "memory");  /* no wakeup lost: sti's shadow */
    }
    __asm__ volatile("sti");
    kprintf("ticks ok\n");

    uint32_t sum = work(NFIB);
    kprintf("work: fib[%u] = %u, sum = %u\n", NFIB - 1, fib[NFIB - 1], sum);

    kprintf("bye\n");
    qemu_exit(EXIT_OK);
}
