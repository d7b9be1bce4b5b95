/*
 * boot.S - boot header, entry point and interrupt entry stubs of mbkernel.
 *
 * One source for the three builds (build.sh): the boot header is chosen by BOOT_MULTIBOOT2
 * or BOOT_PVH (neither: Multiboot v1), everything after it is shared. Every protocol
 * enters _start in 32-bit protected mode, paging off, interrupts off, with flat CS/DS and
 * EBX = the physical address of its boot information; no stack is set up for us:
 *   Multiboot v1 (0.6.96, 3.2):  EAX = 0x2BADB002, EBX = struct multiboot_info *
 *   Multiboot2 (2.0, 3.3):       EAX = 0x36D76289, EBX = the boot information's tags
 *   PVH (Xen's start_info.h):    EBX = struct hvm_start_info * (its magic is inside)
 * _start passes EAX and EBX on to kmain(magic, mbi) in every case.
 */

#if defined(BOOT_MULTIBOOT2)
        .set MB2_MAGIC,    0xE85250D6
        .set MB2_ARCH,     0                       /* i386, 32-bit protected mode */
        .set MB2_LENGTH,   mb2_header_end - mb2_header
        .set MB2_CHECKSUM, -(MB2_MAGIC + MB2_ARCH + MB2_LENGTH)

        .section .multiboot, "a"
        .balign 8
mb2_header:
        .long MB2_MAGIC, MB2_ARCH, MB2_LENGTH, MB2_CHECKSUM
        .balign 8                               /* information request tag: required */
        .short 1, 0                             /* type 1, flags 0 */
        .long 12                                /* size */
        .long 4                                 /* basic memory information */
        .balign 8                               /* end tag */
        .short 0, 0
        .long 8
mb2_header_end:

#elif defined(BOOT_PVH)
        .set XEN_ELFNOTE_PHYS32_ENTRY, 18

        .section .note.Xen, "a", @note          /* in a PT_NOTE segment (mbkernel.ld) */
        .balign 4
        .long 4                                 /* namesz: "Xen\0" */
        .long 4                                 /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .long _start                            /* 32-bit physical entry (= virtual) */

#else
        .set MB_MAGIC,    0x1BADB002
        .set MB_FLAGS,    (1 << 0) | (1 << 1)     /* page-align modules, want mem_* info */
        .set MB_CHECKSUM, -(MB_MAGIC + MB_FLAGS)

        .section .multiboot, "a"
        .balign 4
        .long MB_MAGIC, MB_FLAGS, MB_CHECKSUM
#endif

        .section .bss
        .balign 16
stack_bottom:
        .skip 16384
stack_top:

        .text
        .cfi_sections .debug_frame

        .globl _start
        .type _start, @function
_start:
        .cfi_startproc
        .cfi_undefined %eip             /* outermost frame: gdb's backtrace ends here */
        cli
        cld
        movl $stack_top, %esp
        xorl %ebp, %ebp
        subl $8, %esp                   /* keep %esp 16-byte aligned at the call */
        pushl %ebx                      /* the boot information */
        pushl %eax                      /* magic (PVH: not defined) */
        call kmain
1:      cli
        hlt
        jmp 1b
        .cfi_endproc
        .size _start, . - _start

/* The CFI below describes the interrupt frame (EIP, CS, EFLAGS pushed by the CPU, no
   stack switch in ring 0) so that gdb's backtrace from a handler reaches the
   interrupted code. */
        .macro INTR_FRAME_CFI above_eip
        .cfi_startproc simple
        .cfi_signal_frame               /* the saved EIP is not a return address */
        .cfi_def_cfa %esp, \above_eip + 12
        .cfi_offset %eip, -12
        .cfi_offset %eflags, -4
        .endm

        .macro PUSHAL_CFI
        pushal
        .cfi_adjust_cfa_offset 32
        .cfi_rel_offset %edi, 0
        .cfi_rel_offset %esi, 4
        .cfi_rel_offset %ebp, 8
        .cfi_rel_offset %ebx, 16
        .cfi_rel_offset %edx, 20
        .cfi_rel_offset %ecx, 24
        .cfi_rel_offset %eax, 28
        .endm

/* IRQ0 (PIT) at vector 0x20: save the registers, count the tick in C, return. */
        .globl irq0_entry
        .type irq0_entry, @function
irq0_entry:
        INTR_FRAME_CFI 0
        PUSHAL_CFI
        cld
        call timer_irq
        popal
        .cfi_adjust_cfa_offset -32
        iretl
        .cfi_endproc
        .size irq0_entry, . - irq0_entry

/* Vectors 0x21-0x2F: every other IRQ line is masked, so only a spurious IRQ7/IRQ15 can
   arrive here, and a spurious IRQ gets no EOI. */
        .globl irq_spurious
        .type irq_spurious, @function
irq_spurious:
        iretl
        .size irq_spurious, . - irq_spurious

/* CPU exceptions 0-31: push a dummy error code where the CPU pushes none, then the
   vector, then all general registers, and hand the frame to exception() in C. */
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_\v:
        .if !((\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30))
        pushl $0
        .endif
        pushl $\v
        jmp exc_common
        .endr

        .type exc_common, @function
exc_common:
        INTR_FRAME_CFI 8                /* vector and error code above EIP */
        PUSHAL_CFI
        cld
        pushl %esp                      /* const struct trap_frame * */
        .cfi_adjust_cfa_offset 4
        call exception                  /* does not return */
1:      cli
        hlt
        jmp 1b
        .cfi_endproc
        .size exc_common, . - exc_common

        .section .rodata
        .balign 4
        .globl exc_stubs
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long exc_\v
        .endr
        .size exc_stubs, . - exc_stubs

        .section .note.GNU-stack, "", @progbits
