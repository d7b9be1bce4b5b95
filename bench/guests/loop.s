/*
 * loop.s - the bench's free-running guest: a Multiboot v1 kernel (ELF32 i386) that runs
 * a loop with a known instruction count between two lines on COM1, then exits through
 * isa-debug-exit. bench/pc.py times the loop by the lines' arrival on the
 * emulator's stdout and divides the count by that time.
 *
 * Serial (polled 16550 at 0x3F8, 115200 8N1), in this order:
 *
 *   bench-loop: start 0x3B9ACA00 x 0x00000006 insns   when the timed loop is about to start
 *   bench-loop: done ebx=0x........                    when it has ended
 *
 * then `outb 0x10, 0xF4` (isa-debug-exit: exit status 33, as mbkernel's success).
 *
 * The timed loop is ITERATIONS passes of LOOP_INSNS instructions (four ALU instructions,
 * dec, jnz): ITERATIONS * LOOP_INSNS instructions exactly. Besides it, between the '\n'
 * of the first line and the '\n' of the second, the guest runs about 600 instructions
 * (the end of the first print, the loop's set-up, the second print and its UART polls):
 * under a millionth of the count. Interrupts stay off (cli): nothing but the loop runs.
 */

        .set MB_MAGIC,    0x1BADB002
        .set MB_FLAGS,    (1 << 0) | (1 << 1)
        .set MB_CHECKSUM, -(MB_MAGIC + MB_FLAGS)

        .set ITERATIONS,  1000000000        /* x LOOP_INSNS = 6,000,000,000 instructions */
        .set LOOP_INSNS,  6

        .set COM1,        0x3F8
        .set DEBUG_EXIT,  0xF4

        .section .multiboot, "a"
        .balign 4
        .long MB_MAGIC, MB_FLAGS, MB_CHECKSUM

        .section .bss
        .balign 16
stack_bottom:
        .skip 4096
stack_top:

        .section .rodata
msg_start:  .asciz "bench-loop: start "
msg_times:  .asciz " x "
msg_insns:  .asciz " insns\n"
msg_done:   .asciz "bench-loop: done ebx="
msg_nl:     .asciz "\n"
hexdigits:  .ascii "0123456789ABCDEF"

        .text
        .globl _start
_start:
        cli
        cld
        movl $stack_top, %esp

        /* 16550: no interrupts, 115200 baud (divisor 1), 8N1, FIFOs on, DTR|RTS */
        movw $COM1 + 1, %dx
        xorb %al, %al
        outb %al, %dx                   /* IER = 0 */
        movw $COM1 + 3, %dx
        movb $0x80, %al
        outb %al, %dx                   /* LCR: DLAB */
        movw $COM1 + 0, %dx
        movb $1, %al
        outb %al, %dx                   /* DLL = 1 */
        movw $COM1 + 1, %dx
        xorb %al, %al
        outb %al, %dx                   /* DLM = 0 */
        movw $COM1 + 3, %dx
        movb $0x03, %al
        outb %al, %dx                   /* LCR: 8N1 */
        movw $COM1 + 2, %dx
        movb $0xC7, %al
        outb %al, %dx                   /* FCR: enable and clear the FIFOs */
        movw $COM1 + 4, %dx
        movb $0x03, %al
        outb %al, %dx                   /* MCR: DTR | RTS */

        movl $msg_start, %esi
        call puts
        movl $ITERATIONS, %eax
        call puthex
        movl $msg_times, %esi
        call puts
        movl $LOOP_INSNS, %eax
        call puthex
        movl $msg_insns, %esi
        call puts

        xorl %eax, %eax
        movl $1, %ebx
        xorl %edx, %edx
        xorl %esi, %esi
        xorl %edi, %edi
        movl $ITERATIONS, %ecx
        .balign 16
        .globl timed_loop
timed_loop:                             /* LOOP_INSNS instructions a pass */
        addl %ebx, %eax
        xorl %eax, %edx
        addl $3, %esi
        subl %edx, %ebx
        decl %ecx
        jnz timed_loop
        .globl timed_loop_end
timed_loop_end:
        pushl %ebx
        movl $msg_done, %esi
        call puts
        popl %eax
        call puthex
        movl $msg_nl, %esi
        call puts

        movw $DEBUG_EXIT, %dx
        movb $0x10, %al
        outb %al, %dx                   /* exit status (0x10 << 1) | 1 = 33 */
1:      cli                             /* without isa-debug-exit: stop here */
        hlt
        jmp 1b

/* putc: %al to COM1 once the transmitter holding register is empty (LSR bit 5). */
putc:
        pushl %edx
        pushl %eax
        movw $COM1 + 5, %dx
1:      inb %dx, %al
        testb $0x20, %al
        jz 1b
        popl %eax
        movw $COM1, %dx
        outb %al, %dx
        popl %edx
        ret

/* puts: the NUL-terminated string at %esi. */
puts:
        pushl %eax
1:      lodsb
        testb %al, %al
        jz 2f
        call putc
        jmp 1b
2:      popl %eax
        ret

/* puthex: %eax as 0x and 8 hex digits. */
puthex:
        pushl %eax
        pushl %ebx
        pushl %ecx
        movl %eax, %ebx
        movb $'0', %al
        call putc
        movb $'x', %al
        call putc
        movl $8, %ecx
1:      roll $4, %ebx
        movl %ebx, %eax
        andl $0xF, %eax
        movb hexdigits(%eax), %al
        call putc
        decl %ecx
        jnz 1b
        popl %ecx
        popl %ebx
        popl %eax
        ret
