/*
 * smpkernel boot code: the two ways in, and the APs' way in (GNU as through gcc's
 * preprocessor, AT&T syntax). Everything here is linked and run at its physical address,
 * which every loader identity-maps; the C kernel (kernel.c) is linked in the higher half
 * (KERNEL_VMA + physical), mapped only once _start has loaded the kernel's own page tables.
 *
 *   - our stub (--boot vmstub): 64-bit `_start`, rdi = vCPU index, rsi = vCPU count,
 *     rdx = RAM bytes, rsp = 0 (docs/boot-protocol.md)
 *   - QEMU -kernel (Multiboot v1, a.out kludge): 32-bit `mb_entry32` -> long mode ->
 *     `mb_entry64` -> `_start` with index 0, count 1
 *   - APs, started by kmain through port 0xEB: `ap_entry`, same registers as _start
 *
 * The boot page tables and the GDT of the loader (0x1000-0x7fff) are never written.
 */
#include "smp.h"

        .set    PTE_P,          0x001
        .set    PTE_W,          0x002
        .set    PTE_PS,         0x080               /* 2 MiB page in a page directory */
        .set    PAGE_2M,        0x200000

        .set    MB_MAGIC,       0x1BADB002
        .set    MB_BOOT_MAGIC,  0x2BADB002
        .set    MB_FLAGS,       0x00010002          /* a.out kludge | memory info */
        .set    MB_DEFAULT_KB,  64*1024

        /* Multiboot header: QEMU scans the first 8 KiB; smpkernel.ld puts this section
         * right after the ELF headers. The a.out kludge makes QEMU copy the file from
         * offset 0 to 0x100000, where every PT_LOAD says its bytes go. */
        .section .boot.mb, "a", @progbits
        .balign 4
        .globl  mb_header
mb_header:
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   -(MB_MAGIC + MB_FLAGS)
        .long   mb_header               /* header_addr */
        .long   __mb_load_start         /* load_addr: file offset 0 */
        .long   __mb_load_end           /* load_end_addr */
        .long   __mb_bss_end            /* bss_end_addr: QEMU zeroes up to here */
        .long   mb_entry32              /* entry_addr */

        .section .boot, "ax", @progbits

/* ---- 64-bit entry of vCPU 0. No stack yet: rdi/rsi/rdx must survive to kmain. */
        .code64
        .globl  _start
        .type   _start, @function
_start:
        cli
        cld
        /* Identity map of the first GiB (2 MiB pages): keeps this code and ap_entry
         * running across the CR3 switch. */
        mov     $(pd_lo - KERNEL_VMA), %r8d
        mov     $(PTE_P|PTE_W|PTE_PS), %eax
        xor     %ecx, %ecx
1:      mov     %rax, (%r8,%rcx,8)
        add     $PAGE_2M, %rax
        inc     %ecx
        cmp     $512, %ecx
        jb      1b
        /* The same GiB again at KERNEL_VMA: the C kernel's addresses. */
        mov     $(pd_lo - KERNEL_VMA + PTE_P + PTE_W), %eax
        mov     %rax, (pdpt_lo - KERNEL_VMA)
        mov     %rax, (pdpt_hi - KERNEL_VMA + 510*8)
        mov     $(pdpt_lo - KERNEL_VMA + PTE_P + PTE_W), %eax
        mov     %rax, (pml4 - KERNEL_VMA)
        mov     $(pdpt_hi - KERNEL_VMA + PTE_P + PTE_W), %eax
        mov     %rax, (pml4 - KERNEL_VMA + 511*8)
        mov     $(pml4 - KERNEL_VMA), %eax
        mov     %rax, %cr3
        jmp     enter_c
        .size   _start, . - _start

/* ---- 64-bit AP entry (port 0xEB), on the loader's CR3 and without a stack. vCPU 0
 * built the kernel's tables before starting any AP. */
        .globl  ap_entry
        .type   ap_entry, @function
ap_entry:
        cli
        cld
        mov     $(pml4 - KERNEL_VMA), %eax
        mov     %rax, %cr3
        jmp     enter_c
        .size   ap_entry, . - ap_entry

/* rdi = vCPU index: take that vCPU's stack (the top of stacks[rdi], higher half) and
 * call cpu_main(index, count, ram) in C; it never returns. An index the kernel has no
 * stack for parks the vCPU. */
        .type   enter_c, @function
enter_c:
        cmp     $MAX_CPUS, %rdi
        jae     2f
        mov     %rdi, %rax
        inc     %rax
        shl     $STACK_SHIFT, %rax
        movabs  $stacks, %rsp
        add     %rax, %rsp
        xor     %ebp, %ebp              /* the outermost frame for gdb's backtraces */
        movabs  $cpu_main, %rax
        call    *%rax
2:      cli
        hlt
        jmp     2b
        .size   enter_c, . - enter_c

/* ---- QEMU: Multiboot v1 entry. 32-bit protected mode, paging off, eax = magic,
 * ebx = multiboot info. */
        .code32
        .globl  mb_entry32
        .type   mb_entry32, @function
mb_entry32:
        cli
        cld
        mov     $MB_DEFAULT_KB, %ebp    /* RAM in KiB, kept in ebp */
        cmp     $MB_BOOT_MAGIC, %eax
        jne     1f
        testl   $1, (%ebx)
        jz      1f
        mov     8(%ebx), %ebp           /* mem_upper: KiB above 1 MiB */
        add     $1024, %ebp
1:      /* Remap the PICs off the exception vectors and mask them (interrupts stay off
         * anyway; an unmasked PIT would be vector 8 otherwise). */
        mov     $0x11, %al
        out     %al, $0x20
        out     %al, $0xA0
        mov     $0x20, %al
        out     %al, $0x21
        mov     $0x28, %al
        out     %al, $0xA1
        mov     $0x04, %al
        out     %al, $0x21
        mov     $0x02, %al
        out     %al, $0xA1
        mov     $0x01, %al
        out     %al, $0x21
        out     %al, $0xA1
        mov     $0xFF, %al
        out     %al, $0x21
        out     %al, $0xA1
        /* Just enough paging for long mode (the identity GiB); _start rebuilds it with
         * the higher half. */
        mov     $(pd_lo - KERNEL_VMA), %edi
        mov     $(PTE_P|PTE_W|PTE_PS), %eax
        xor     %ecx, %ecx
2:      mov     %eax, (%edi,%ecx,8)
        movl    $0, 4(%edi,%ecx,8)
        add     $PAGE_2M, %eax
        inc     %ecx
        cmp     $512, %ecx
        jb      2b
        movl    $(pd_lo - KERNEL_VMA + PTE_P + PTE_W), (pdpt_lo - KERNEL_VMA)
        movl    $(pdpt_lo - KERNEL_VMA + PTE_P + PTE_W), (pml4 - KERNEL_VMA)
        mov     $(pml4 - KERNEL_VMA), %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $0x220, %eax            /* PAE | OSFXSR, as the vmstub loader sets */
        mov     %eax, %cr4
        mov     $0xC0000080, %ecx       /* EFER.LME */
        rdmsr
        or      $0x100, %eax
        wrmsr
        lgdt    boot_gdtr
        mov     %cr0, %eax
        or      $0x80000001, %eax       /* PG | PE */
        mov     %eax, %cr0
        ljmp    $0x08, $mb_entry64
        .size   mb_entry32, . - mb_entry32

        .code64
        .type   mb_entry64, @function
mb_entry64:
        mov     $0x10, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        mov     %ebp, %edx              /* as the vmstub loader presents vCPU 0 */
        shl     $10, %rdx
        xor     %edi, %edi
        mov     $1, %esi
        jmp     _start
        .size   mb_entry64, . - mb_entry64

/* The GDT of the 32->64-bit switch (the loader's selectors: 0x08 code, 0x10 data). */
        .balign 16
boot_gdt:
        .quad   0
        .quad   0x00AF9B000000FFFF
        .quad   0x00CF93000000FFFF
boot_gdt_end:
boot_gdtr:
        .word   boot_gdt_end - boot_gdt - 1
        .quad   boot_gdt

/* ---- The kernel's page tables (higher-half .bss, zeroed by both loaders). */
        .section .bss.pagetables, "aw", @nobits
        .balign 4096
pml4:   .skip   4096
pdpt_lo: .skip  4096
pdpt_hi: .skip  4096
pd_lo:  .skip   4096

        .section .note.GNU-stack, "", @progbits
