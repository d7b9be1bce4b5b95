# vmstub demo kernel: a tiny multi-vCPU x86-64 guest for exercising the debugger.
#
# Plain GNU as (no C preprocessor), AT&T syntax. See README.md beside this file for the
# memory layout and the symbols tests rely on; docs/boot-protocol.md for the contract
# with the emulated VMM.
#
# Two ways in, one way on:
#   - emulated VMM: 64-bit `_start` (physical, under the loader's identity map)
#   - QEMU -kernel: multiboot v1 (a.out kludge) -> 32-bit `mb_entry32` -> long mode ->
#     `mb_entry64` -> `_start`
# `_start` builds the kernel's own page tables and jumps to `kmain64` in the higher half.
# Application processors enter at `ap_entry` (physical) and join at `ap_main64`.
#
# The kernel must never write the loader region (0x1000-0x7fff): APs start on the
# loader's page tables and GDT long after vCPU 0 has left them.

        .set    KERNEL_VMA,     0xFFFFFFFF80000000  # higher-half alias: GVA = GPA + KERNEL_VMA
        .set    MAX_CPUS,       16
        .set    CPU_AREA_SIZE,  16384               # per-CPU block: data at the bottom, stack above
        .set    CPU_AREA_SHIFT, 14
        .set    PERCPU_ID,      0                   # offset of the CPU index in its block

        .set    PORT_CONSOLE,   0xE9
        .set    PORT_AP_START,  0xEB
        .set    PORT_POWEROFF,  0xF4
        .set    VEC_TIMER,      0x20

        .set    RFLAGS_CF,      0x001
        .set    RFLAGS_PF,      0x004
        .set    RFLAGS_AF,      0x010
        .set    RFLAGS_ZF,      0x040
        .set    RFLAGS_SF,      0x080
        .set    RFLAGS_TF,      0x100
        .set    RFLAGS_IF,      0x200
        .set    RFLAGS_OF,      0x800
        # Flags flags_probe flips with popf: every arithmetic flag (not DF: handlers and
        # the printing code would inherit it).
        .set    PROBE_FLIP,     RFLAGS_CF|RFLAGS_PF|RFLAGS_AF|RFLAGS_ZF|RFLAGS_SF|RFLAGS_OF

        .set    PTE_P,          0x001
        .set    PTE_W,          0x002
        .set    PTE_PS,         0x080               # 2 MiB page in a page directory
        .set    PAGE_2M,        0x200000

        .set    MB_MAGIC,       0x1BADB002          # in the header
        .set    MB_BOOT_MAGIC,  0x2BADB002          # in eax at the 32-bit entry
        .set    MB_FLAGS,       0x00010002          # a.out kludge (bit 16) | memory info (bit 1)
        .set    MB_DEFAULT_KB,  64*1024             # RAM assumed if the loader gives no map

        .set    EXIT_AP_BAD,    0x02                # power-off codes (0 = clean, see `poweroff`)
        .set    EXIT_EXC_BASE,  0x80                # + exception vector

        # The physical addresses computed below as `sym - KERNEL_VMA` are only right if
        # demo.ld links the kernel at the same offset; demo.ld asserts it via this symbol.
        .globl  __kernel_vma_asm
        .set    __kernel_vma_asm, KERNEL_VMA

###########################################################################################
# Boot section: linked and run at its physical address (identity-mapped by every loader).
###########################################################################################

        # QEMU only looks for the multiboot header in the first 8 KiB of the file; the
        # linker script puts this section right after the ELF headers, and the a.out
        # kludge makes QEMU copy the file from offset 0 to 0x100000 so every byte lands
        # where its PT_LOAD says.
        .section .boot.mb, "a", @progbits
        .balign 4
        .globl  mb_header
        .type   mb_header, @object
mb_header:
        .long   MB_MAGIC
        .long   MB_FLAGS
        .long   -(MB_MAGIC + MB_FLAGS)
        .long   mb_header               # header_addr
        .long   __mb_load_start         # load_addr: file offset 0 (the ELF header)
        .long   __mb_load_end           # load_end_addr: end of the last file-backed byte
        .long   __mb_bss_end            # bss_end_addr: QEMU zeroes up to here
        .long   mb_entry32              # entry_addr
        .size   mb_header, . - mb_header

        .section .boot, "ax", @progbits

# ---- 64-bit boot entry (vCPU 0). rdi = vCPU index, rsi = vCPU count, rdx = RAM bytes.
# rsp is 0, so nothing here may touch the stack; rdi/rsi/rdx must survive to kmain64.
        .code64
        .globl  _start
        .type   _start, @function
_start:
        cli
        cld

        # Identity map of the first 1 GiB with 2 MiB pages: keeps this code, and the
        # APs' entry path, running after the CR3 switch below.
        mov     $(pd_lo - KERNEL_VMA), %r8d
        mov     $(PTE_P|PTE_W|PTE_PS), %eax
        xor     %ecx, %ecx
1:      mov     %rax, (%r8,%rcx,8)
        add     $PAGE_2M, %rax
        inc     %ecx
        cmp     $512, %ecx
        jb      1b

        # Higher half, first 2 MiB through 4 KiB pages: the kernel image lives there, so
        # every access to its symbols exercises a full 4-level walk down to a PTE (the
        # identity map above covers the 2 MiB case).
        mov     $(pt_kernel - KERNEL_VMA), %r8d
        mov     $(PTE_P|PTE_W), %eax
        xor     %ecx, %ecx
1:      mov     %rax, (%r8,%rcx,8)
        add     $0x1000, %rax
        inc     %ecx
        cmp     $512, %ecx
        jb      1b

        # Rest of the higher-half gigabyte with 2 MiB pages.
        mov     $(pd_hi - KERNEL_VMA), %r8d
        mov     $(pt_kernel - KERNEL_VMA + PTE_P + PTE_W), %eax
        mov     %rax, (%r8)
        mov     $(PAGE_2M|PTE_P|PTE_W|PTE_PS), %eax
        mov     $1, %ecx
1:      mov     %rax, (%r8,%rcx,8)
        add     $PAGE_2M, %rax
        inc     %ecx
        cmp     $512, %ecx
        jb      1b

        # Upper levels: PML4[0] -> identity, PML4[511]/PDPT[510] -> 0xffffffff80000000.
        # The other entries stay zero (.bss, cleared by both loaders).
        movq    $(pd_lo - KERNEL_VMA + PTE_P + PTE_W), (pdpt_lo - KERNEL_VMA)
        movq    $(pd_hi - KERNEL_VMA + PTE_P + PTE_W), (pdpt_hi - KERNEL_VMA + 510*8)
        movq    $(pdpt_lo - KERNEL_VMA + PTE_P + PTE_W), (pml4 - KERNEL_VMA)
        movq    $(pdpt_hi - KERNEL_VMA + PTE_P + PTE_W), (pml4 - KERNEL_VMA + 511*8)

        mov     $(pml4 - KERNEL_VMA), %eax
        mov     %rax, %cr3
        mov     $kmain64, %rax          # sign-extended imm32: the kernel code model
        jmp     *%rax
        .size   _start, . - _start

# ---- 64-bit AP entry, started through port 0xEB. Same registers as _start, still on the
# loader's CR3/GDT and without a stack. vCPU 0 built our tables before starting us.
        .globl  ap_entry
        .type   ap_entry, @function
ap_entry:
        cli
        cld
        mov     $(pml4 - KERNEL_VMA), %eax
        mov     %rax, %cr3
        mov     $ap_main64, %rax
        jmp     *%rax
        .size   ap_entry, . - ap_entry

# ---- QEMU path: multiboot v1 entry. 32-bit protected mode, paging off, flat segments,
# eax = MB_BOOT_MAGIC, ebx = multiboot info. No stack needed either.
        .code32
        .globl  mb_entry32
        .type   mb_entry32, @function
mb_entry32:
        cli
        cld
        # RAM size in KiB into ebp (survives everything below); 64 MiB if unknown.
        mov     $MB_DEFAULT_KB, %ebp
        cmp     $MB_BOOT_MAGIC, %eax
        jne     1f
        testl   $1, (%ebx)              # mem_lower/mem_upper valid?
        jz      1f
        mov     8(%ebx), %ebp           # mem_upper: KiB above 1 MiB
        add     $1024, %ebp
1:
        # Remap the 8259 PICs off the exception vectors (IRQ0 -> 0x20, IRQ8 -> 0x28) and
        # mask every line: QEMU has no paravirtual timer, and an unmasked PIT would land
        # on vector 8 (#DF) otherwise. The emulated VMM never runs this code.
        mov     $0x11, %al              # ICW1: edge, cascade, ICW4 follows
        out     %al, $0x20
        out     %al, $0xA0
        mov     $0x20, %al              # ICW2: vector base
        out     %al, $0x21
        mov     $0x28, %al
        out     %al, $0xA1
        mov     $0x04, %al              # ICW3: slave on IRQ2
        out     %al, $0x21
        mov     $0x02, %al
        out     %al, $0xA1
        mov     $0x01, %al              # ICW4: 8086 mode
        out     %al, $0x21
        out     %al, $0xA1
        mov     $0xFF, %al              # OCW1: mask all
        out     %al, $0x21
        out     %al, $0xA1

        # Just enough paging to reach long mode: the identity gigabyte. _start rebuilds
        # it (same values) together with the higher half.
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
        or      $0x20, %eax             # PAE (nothing else: the kernel uses no SSE)
        mov     %eax, %cr4
        mov     $0xC0000080, %ecx       # EFER.LME
        rdmsr
        or      $0x100, %eax
        wrmsr
        lgdt    boot_gdtr               # 32-bit form: reads limit + low 4 bytes of base
        mov     %cr0, %eax
        or      $0x80000001, %eax       # PG (PE is already on)
        mov     %eax, %cr0
        ljmp    $0x08, $mb_entry64      # compatibility mode -> 64-bit code segment
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
        # Present ourselves exactly like the emulated VMM's loader does for vCPU 0.
        mov     %ebp, %edx
        shl     $10, %rdx
        xor     %edi, %edi
        mov     $1, %esi
        jmp     _start
        .size   mb_entry64, . - mb_entry64

# GDT for the 32->64-bit switch only (kmain64 loads the kernel's own). Same selectors
# as the loader's: 0x08 64-bit code, 0x10 data. Accessed bits preset so the CPU never
# writes here.
        .balign 16
boot_gdt:
        .quad   0
        .quad   0x00AF9B000000FFFF      # 0x08: code, L=1, DPL 0
        .quad   0x00CF93000000FFFF      # 0x10: data, writable
boot_gdt_end:
boot_gdtr:
        .word   boot_gdt_end - boot_gdt - 1
        .quad   boot_gdt

###########################################################################################
# Higher half (GVA = GPA + KERNEL_VMA).
###########################################################################################

        .text

# Point rsp at the top of this CPU's block and record the index at its bottom, so any
# code on this stack (interrupt handlers included) finds its CPU by masking rsp.
# In: rdi = CPU index (< MAX_CPUS). Clobbers rax.
        .macro  ENTER_CPU_AREA
        mov     %rdi, %rax
        shl     $CPU_AREA_SHIFT, %rax
        lea     cpu_areas(%rip), %rsp
        add     %rax, %rsp
        mov     %rdi, PERCPU_ID(%rsp)
        add     $CPU_AREA_SIZE, %rsp
        .endm

# rax = index of the CPU whose stack we are on.
        .macro  THIS_CPU
        mov     %rsp, %rax
        and     $-CPU_AREA_SIZE, %rax
        mov     PERCPU_ID(%rax), %rax
        .endm

# ---- vCPU 0, higher half. rdi = 0, rsi = vCPU count, rdx = RAM bytes.
        .globl  kmain64
        .type   kmain64, @function
kmain64:
        ENTER_CPU_AREA
        mov     %rdi, %r12              # cpu_loop keeps its index in r12
        mov     %rdx, ram_size(%rip)

        # ncpus = clamp(rsi, 1, MAX_CPUS): one stack block per CPU, nothing beyond.
        mov     %rsi, %rax
        test    %rax, %rax
        jnz     1f
        mov     $1, %eax
1:      cmp     $MAX_CPUS, %rax
        jbe     2f
        mov     $MAX_CPUS, %eax
2:      mov     %rax, ncpus(%rip)

        call    idt_build               # before any AP can load it
        call    load_cpu_tables

        # The banner: exactly one line, printed before any AP runs.
        lea     banner_head(%rip), %rsi
        call    puts
        mov     ncpus(%rip), %rax
        call    put_dec
        lea     banner_tail(%rip), %rsi
        call    puts

        # Start APs 1..ncpus-1. The start request is fire-and-forget: we never wait for an
        # AP, so vCPU 0 keeps running even if the VMM (or a debugger) holds them.
        mov     $1, %ecx
3:      cmp     ncpus(%rip), %rcx
        jae     4f
        mov     %ecx, %eax
        mov     $ap_entry, %ebx         # physical: APs start on the loader's tables
        out     %eax, $PORT_AP_START
        inc     %ecx
        jmp     3b
4:
        lock incq cpus_online(%rip)
        jmp     cpu_loop
        .size   kmain64, . - kmain64

# ---- AP, higher half, on our CR3 but the loader's GDT. rdi = AP index.
        .type   ap_main64, @function
ap_main64:
        # Index 0 or >= MAX_CPUS would share or overrun a stack block: a VMM bug, make it
        # loud. No stack yet, so print without calls.
        test    %rdi, %rdi
        jz      ap_reject
        cmp     $MAX_CPUS, %rdi
        jae     ap_reject
        ENTER_CPU_AREA
        mov     %rdi, %r12
        call    load_cpu_tables
        lock incq cpus_online(%rip)
        jmp     cpu_loop
        .size   ap_main64, . - ap_main64

        .type   ap_reject, @function
ap_reject:
        lea     msg_ap_bad(%rip), %rsi
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $PORT_CONSOLE
        jmp     1b
2:      mov     $EXIT_AP_BAD, %eax
        jmp     poweroff_eax
        .size   ap_reject, . - ap_reject

# ---- The per-CPU loop. Every CPU runs it forever with its index in r12 (nothing it
# calls, and no interrupt handler, changes r12). The loop head is the symbol itself, so a
# breakpoint on `cpu_loop` hits once per iteration on every CPU.
        .globl  cpu_loop
        .type   cpu_loop, @function
cpu_loop:
        sti                             # timer interrupts may arrive from here on
        incq    loops(,%r12,8)          # single writer per slot: no lock needed
        call    flags_probe

        # A short interrupts-off window: a tick that falls here stays pending until sti.
        # The image pushed inside must show IF=0 and, as always, TF=0.
        cli
        pushfq
        testq   $RFLAGS_TF, (%rsp)
        jz      1f
        lock incq tf_leaks(%rip)
1:      testq   $RFLAGS_IF, (%rsp)
        jz      2f
        lock incq flags_errors(%rip)
2:      popfq
        sti
        nop                             # the sti shadow: no interrupt before this is done

        # Our own breakpoint every 64 passes: the debugger does not own it, so it must
        # reach bp_isr (re-injected) rather than stop gdb.
        testb   $63, loops(,%r12,8)
        jnz     cpu_loop
        int3
        jmp     cpu_loop
        .size   cpu_loop, . - cpu_loop

# ---- pushf/popf exercises. Counts into tf_leaks any flags image with TF set (the guest
# never sets TF, so a set TF can only be the debugger's single-step leaking through) and
# into flags_errors a popf whose effect does not read back. Clobbers rax, rcx, rdx.
        .globl  flags_probe
        .type   flags_probe, @function
flags_probe:
        pushfq                          # image A: stays on the stack until the end
        mov     (%rsp), %rax
        test    $RFLAGS_TF, %eax
        jz      1f
        lock incq tf_leaks(%rip)
1:      pushfq                          # nested: two images back to back, both checked
        pushfq
        mov     (%rsp), %rcx
        or      8(%rsp), %rcx
        add     $16, %rsp
        test    $RFLAGS_TF, %ecx
        jz      2f
        lock incq tf_leaks(%rip)
2:      mov     %rax, %rcx              # image B = A with every arithmetic flag flipped
        xor     $PROBE_FLIP, %rcx       #   and IF cleared: popf changes them all at once
        and     $~RFLAGS_IF, %rcx
        push    %rcx
        popfq
        pushfq                          # read back before any instruction touches flags
        pop     %rdx
        xor     %rcx, %rdx              # bits that did not come out as written
        test    $(PROBE_FLIP|RFLAGS_IF|RFLAGS_TF), %edx
        jz      3f
        lock incq flags_errors(%rip)
3:      popfq                           # back to image A (IF included)
        ret
        .size   flags_probe, . - flags_probe

# ---- Interrupt handlers. Frame on entry: RIP 0, CS 8, RFLAGS 16, RSP 24, SS 32 (no error
# code on these vectors). Each checks the interrupted RFLAGS image before pushing
# anything, saves every register it touches, and returns with iretq (which also restores
# the flags the test instructions change).

        .globl  timer_isr
        .type   timer_isr, @function
timer_isr:
        testq   $RFLAGS_TF, 16(%rsp)
        jz      1f
        lock incq tf_leaks(%rip)
1:      push    %rax
        THIS_CPU
        incq    ticks(,%rax,8)          # only this CPU's timer writes this slot
        pop     %rax
        iretq
        .size   timer_isr, . - timer_isr

        .globl  bp_isr
        .type   bp_isr, @function
bp_isr:
        testq   $RFLAGS_TF, 16(%rsp)
        jz      1f
        lock incq tf_leaks(%rip)
1:      lock incq guest_int3_count(%rip)
        iretq                           # RIP already points past the int3
        .size   bp_isr, . - bp_isr

# The guest never sets TF, so any #DB that reaches it is the debugger's trap leaking.
# Clear TF in the frame so one leak is counted once, not once per instruction after it.
        .globl  db_isr
        .type   db_isr, @function
db_isr:
        lock incq guest_db_count(%rip)
        lock incq tf_leaks(%rip)
        andq    $~RFLAGS_TF, 16(%rsp)
        iretq
        .size   db_isr, . - db_isr

# Vectors 0x21-0xff: nothing should raise them (the QEMU path masks the PIC); count and
# return rather than die, since a spurious PIC interrupt is not a kernel bug.
        .globl  unexpected_isr
        .type   unexpected_isr, @function
unexpected_isr:
        lock incq spurious_irqs(%rip)
        iretq
        .size   unexpected_isr, . - unexpected_isr

# Exceptions 0-31 other than #DB/#BP: one 16-byte stub per vector (idt_build indexes
# them), each leaving [vector, error code] above the hardware frame.
        .macro  EXC_STUB vec
        .balign 16
        .if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
        .else
        pushq   $0                      # no error code from the CPU: keep the layout
        .endif
        pushq   $\vec
        jmp     exc_common
        .endm

        .globl  exc_stubs
        .type   exc_stubs, @function
        .balign 16
exc_stubs:
        .irp    v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        EXC_STUB \v
        .endr
        .size   exc_stubs, . - exc_stubs

# Fatal: print "cpu C: exception V error E rip R" and power off with 0x80 + V. Only the
# first CPU to fault reports; others halt (the VM is about to end anyway).
        .globl  exc_common
        .type   exc_common, @function
exc_common:
        cli
        lock btsq $0, fault_lock(%rip)
        jc      halt_forever
        mov     %rsp, %rbx              # rbx: [vector, error, rip, cs, rflags, rsp, ss]
        lea     msg_exc_cpu(%rip), %rsi
        call    puts
        THIS_CPU
        call    put_dec
        lea     msg_exc_vec(%rip), %rsi
        call    puts
        mov     0(%rbx), %rax
        call    put_dec
        lea     msg_exc_err(%rip), %rsi
        call    puts
        mov     8(%rbx), %rax
        call    put_hex
        lea     msg_exc_rip(%rip), %rsi
        call    puts
        mov     16(%rbx), %rax
        call    put_hex
        mov     $0x0A, %al
        call    putc
        mov     0(%rbx), %eax
        add     $EXIT_EXC_BASE, %eax
        jmp     poweroff_eax
        .size   exc_common, . - exc_common

# ---- Power off with exit code 0. Never called by the kernel itself; a debugger can
# `jump poweroff` (or set rip to it) to end the VM cleanly. Where port 0xF4 does nothing
# (QEMU without isa-debug-exit) the CPU halts with interrupts off.
        .globl  poweroff
        .type   poweroff, @function
poweroff:
        xor     %eax, %eax
        .size   poweroff, . - poweroff
        # fall through
        .globl  poweroff_eax
        .type   poweroff_eax, @function
poweroff_eax:                           # exit code in eax; needs no stack
        mov     $PORT_POWEROFF, %edx
        out     %eax, %dx
        .size   poweroff_eax, . - poweroff_eax
        # fall through
        .globl  halt_forever
        .type   halt_forever, @function
halt_forever:
        cli
        hlt
        jmp     halt_forever
        .size   halt_forever, . - halt_forever

# ---- Descriptor tables.

# IDT: exception stubs for 0-31, #DB/#BP/timer handlers, unexpected_isr for the rest.
# Built at run time because a gate splits the handler address into three fields.
        .type   idt_build, @function
idt_build:
        push    %rdi
        push    %rsi
        xor     %edi, %edi
1:      mov     %rdi, %rsi
        shl     $4, %rsi
        lea     exc_stubs(%rip), %rax
        add     %rax, %rsi
        call    set_gate
        inc     %edi
        cmp     $32, %edi
        jb      1b
2:      lea     unexpected_isr(%rip), %rsi
        call    set_gate
        inc     %edi
        cmp     $256, %edi
        jb      2b
        mov     $1, %edi
        lea     db_isr(%rip), %rsi
        call    set_gate
        mov     $3, %edi
        lea     bp_isr(%rip), %rsi
        call    set_gate
        mov     $VEC_TIMER, %edi
        lea     timer_isr(%rip), %rsi
        call    set_gate
        pop     %rsi
        pop     %rdi
        ret
        .size   idt_build, . - idt_build

# edi = vector, rsi = handler: a present, DPL 0, 64-bit interrupt gate (IF cleared on
# entry) on selector 0x08, no IST. Clobbers rax, rcx.
        .type   set_gate, @function
set_gate:
        mov     %edi, %eax
        shl     $4, %eax
        lea     idt(%rip), %rcx
        add     %rcx, %rax
        mov     %si, 0(%rax)            # offset 15:0
        movw    $0x08, 2(%rax)          # selector
        movw    $0x8E00, 4(%rax)        # IST 0, type 0xE (interrupt gate), P=1, DPL 0
        mov     %rsi, %rcx
        shr     $16, %rcx
        mov     %cx, 6(%rax)            # offset 31:16
        shr     $16, %rcx
        mov     %ecx, 8(%rax)           # offset 63:32
        movl    $0, 12(%rax)
        ret
        .size   set_gate, . - set_gate

# Load the kernel's GDT (higher-half base) and IDT on this CPU and reload every segment
# register from the new GDT. CS can only be reloaded by a far transfer: lretq to our own
# return address. Clobbers rax.
        .type   load_cpu_tables, @function
load_cpu_tables:
        lgdt    gdtr(%rip)
        lidt    idtr(%rip)
        mov     $0x10, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        pop     %rax                    # our return address
        pushq   $0x08
        push    %rax
        lretq
        .size   load_cpu_tables, . - load_cpu_tables

# ---- Console (port 0xE9, one byte per out). Used only at boot and on a fatal fault.

# al -> console.
        .type   putc, @function
putc:
        out     %al, $PORT_CONSOLE
        ret
        .size   putc, . - putc

# rsi = NUL-terminated string. Clobbers rax, rsi.
        .type   puts, @function
puts:
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $PORT_CONSOLE
        jmp     1b
2:      ret
        .size   puts, . - puts

# rax = unsigned value, printed in decimal. Clobbers rax, rcx, rdx.
        .type   put_dec, @function
put_dec:
        push    %rbx
        mov     %rsp, %rbx              # digits go below rsp, most significant last
        mov     $10, %ecx
1:      xor     %edx, %edx
        div     %rcx
        add     $0x30, %dl
        dec     %rsp
        mov     %dl, (%rsp)
        test    %rax, %rax
        jnz     1b
2:      mov     (%rsp), %al
        out     %al, $PORT_CONSOLE
        inc     %rsp
        cmp     %rbx, %rsp
        jb      2b
        pop     %rbx
        ret
        .size   put_dec, . - put_dec

# rax = value, printed as 16 hex digits. Clobbers rax, rcx, rdx.
        .type   put_hex, @function
put_hex:
        mov     %rax, %rdx
        mov     $16, %ecx
1:      rol     $4, %rdx
        mov     %dl, %al
        and     $0xF, %al
        add     $0x30, %al
        cmp     $0x39, %al
        jbe     2f
        add     $(0x61 - 0x3A), %al             # 'a' - ('9' + 1)
2:      out     %al, $PORT_CONSOLE
        dec     %ecx
        jnz     1b
        ret
        .size   put_hex, . - put_hex

###########################################################################################
# Read-only data.
###########################################################################################

        .section .rodata, "a", @progbits
banner_head:    .asciz  "vmstub demo kernel: "
banner_tail:    .asciz  " vCPUs\n"
msg_ap_bad:     .asciz  "vmstub demo kernel: AP started with an invalid index\n"
msg_exc_cpu:    .asciz  "vmstub demo kernel: cpu "
msg_exc_vec:    .asciz  ": exception "
msg_exc_err:    .asciz  " error 0x"
msg_exc_rip:    .asciz  " rip 0x"

###########################################################################################
# Data.
###########################################################################################

        .data
# The kernel's GDT, same selectors as the loader's so nothing changes meaning when it is
# loaded. No TSS: every interrupt runs on the interrupted CPU's own kernel stack.
        .balign 16
        .globl  gdt
        .type   gdt, @object
gdt:
        .quad   0
        .quad   0x00AF9B000000FFFF      # 0x08: 64-bit code, DPL 0
        .quad   0x00CF93000000FFFF      # 0x10: data
        .size   gdt, . - gdt
gdt_end:

        .balign 8
        .skip   6                       # so the 8-byte bases below are aligned
gdtr:
        .word   gdt_end - gdt - 1
        .quad   gdt
        .skip   6
idtr:
        .word   256*16 - 1
        .quad   idt

###########################################################################################
# Zeroed data (both loaders clear it). Counters first, then tables and stacks.
###########################################################################################

        .bss
        .balign 4096
# Paging structures: PML4 -> {PDPT lo -> PD lo (2 MiB identity),
#                            PDPT hi[510] -> PD hi -> {PT (4 KiB, first 2 MiB), 2 MiB}}
        .globl  pml4
        .type   pml4, @object
pml4:           .skip   4096
        .size   pml4, 4096
pdpt_lo:        .skip   4096
pd_lo:          .skip   4096
pdpt_hi:        .skip   4096
pd_hi:          .skip   4096
pt_kernel:      .skip   4096

        .globl  idt
        .type   idt, @object
idt:            .skip   256*16
        .size   idt, 256*16

        .balign 64
        .globl  tf_leaks
        .type   tf_leaks, @object
tf_leaks:       .skip   8               # flags images / #DBs that showed the debugger's TF
        .size   tf_leaks, 8
        .globl  flags_errors
        .type   flags_errors, @object
flags_errors:   .skip   8               # popf effects that did not read back, IF=1 under cli
        .size   flags_errors, 8
        .globl  guest_int3_count
        .type   guest_int3_count, @object
guest_int3_count: .skip 8               # int3s delivered to bp_isr
        .size   guest_int3_count, 8
        .globl  guest_db_count
        .type   guest_db_count, @object
guest_db_count: .skip   8               # #DBs delivered to db_isr (should stay 0)
        .size   guest_db_count, 8
        .globl  spurious_irqs
        .type   spurious_irqs, @object
spurious_irqs:  .skip   8               # vectors 0x21-0xff
        .size   spurious_irqs, 8
        .globl  ncpus
        .type   ncpus, @object
ncpus:          .skip   8               # CPUs this kernel runs (rsi clamped to 1..16)
        .size   ncpus, 8
        .globl  cpus_online
        .type   cpus_online, @object
cpus_online:    .skip   8               # CPUs that reached cpu_loop
        .size   cpus_online, 8
        .globl  ram_size
        .type   ram_size, @object
ram_size:       .skip   8               # rdx at boot
        .size   ram_size, 8
fault_lock:     .skip   8

        .balign 64
        .globl  ticks
        .type   ticks, @object
ticks:          .skip   8*MAX_CPUS      # timer interrupts taken, per CPU
        .size   ticks, 8*MAX_CPUS
        .globl  loops
        .type   loops, @object
loops:          .skip   8*MAX_CPUS      # cpu_loop passes, per CPU
        .size   loops, 8*MAX_CPUS

# One block per CPU: the CPU index at the bottom (PERCPU_ID), the stack growing down from
# the top. Aligned to its size so `rsp & -CPU_AREA_SIZE` finds the block.
        .balign CPU_AREA_SIZE
        .globl  cpu_areas
        .type   cpu_areas, @object
cpu_areas:      .skip   CPU_AREA_SIZE*MAX_CPUS
        .size   cpu_areas, CPU_AREA_SIZE*MAX_CPUS

###########################################################################################
# Types for gdb (hand-written DWARF 4, no line info, no paths): lets `print tf_leaks`,
# `print ticks`, `print loops[1]`, `watch tf_leaks` work without casts. Functions stay
# plain ELF symbols, so `break cpu_loop` means exactly that address. Not loaded.
###########################################################################################

        .set    DW_TAG_compile_unit, 0x11
        .set    DW_TAG_base_type,    0x24
        .set    DW_TAG_array_type,   0x01
        .set    DW_TAG_subrange_type, 0x21
        .set    DW_TAG_variable,     0x34
        .set    DW_AT_name,          0x03
        .set    DW_AT_byte_size,     0x0b
        .set    DW_AT_location,      0x02
        .set    DW_AT_language,      0x13
        .set    DW_AT_producer,      0x25
        .set    DW_AT_encoding,      0x3e
        .set    DW_AT_external,      0x3f
        .set    DW_AT_type,          0x49
        .set    DW_AT_upper_bound,   0x2f
        .set    DW_FORM_string,      0x08
        .set    DW_FORM_data1,       0x0b
        .set    DW_FORM_data2,       0x05
        .set    DW_FORM_ref4,        0x13
        .set    DW_FORM_flag_present, 0x19
        .set    DW_FORM_exprloc,     0x18
        .set    DW_LANG_C99,         0x0c
        .set    DW_ATE_unsigned,     0x07
        .set    DW_OP_addr,          0x03

        .section .debug_abbrev, "", @progbits
.Ldebug_abbrev:
        .uleb128 1, DW_TAG_compile_unit
        .byte   1
        .uleb128 DW_AT_producer, DW_FORM_string, DW_AT_language, DW_FORM_data2
        .uleb128 DW_AT_name, DW_FORM_string
        .byte   0, 0
        .uleb128 2, DW_TAG_base_type
        .byte   0
        .uleb128 DW_AT_name, DW_FORM_string, DW_AT_encoding, DW_FORM_data1
        .uleb128 DW_AT_byte_size, DW_FORM_data1
        .byte   0, 0
        .uleb128 3, DW_TAG_array_type
        .byte   1
        .uleb128 DW_AT_type, DW_FORM_ref4
        .byte   0, 0
        .uleb128 4, DW_TAG_subrange_type
        .byte   0
        .uleb128 DW_AT_type, DW_FORM_ref4, DW_AT_upper_bound, DW_FORM_data1
        .byte   0, 0
        .uleb128 5, DW_TAG_variable
        .byte   0
        .uleb128 DW_AT_name, DW_FORM_string, DW_AT_type, DW_FORM_ref4
        .uleb128 DW_AT_external, DW_FORM_flag_present, DW_AT_location, DW_FORM_exprloc
        .byte   0, 0
        .byte   0

        .macro  DW_VAR name, type
        .uleb128 5
        .asciz  "\name"
        .long   \type - .Ldebug_info
        .uleb128 9
        .byte   DW_OP_addr
        .quad   \name
        .endm

        .section .debug_info, "", @progbits
.Ldebug_info:
        .long   .Ldebug_info_end - .Ldebug_info - 4
        .short  4
        .long   .Ldebug_abbrev
        .byte   8
        .uleb128 1
        .asciz  "vmstub demo kernel (hand-written DWARF)"
        .short  DW_LANG_C99
        .asciz  "demo.S"
.Ltype_u64:
        .uleb128 2
        .asciz  "unsigned long"
        .byte   DW_ATE_unsigned, 8
.Ltype_per_cpu:                         # unsigned long[MAX_CPUS]
        .uleb128 3
        .long   .Ltype_u64 - .Ldebug_info
        .uleb128 4
        .long   .Ltype_u64 - .Ldebug_info
        .byte   MAX_CPUS - 1
        .byte   0
        DW_VAR  tf_leaks, .Ltype_u64
        DW_VAR  flags_errors, .Ltype_u64
        DW_VAR  guest_int3_count, .Ltype_u64
        DW_VAR  guest_db_count, .Ltype_u64
        DW_VAR  spurious_irqs, .Ltype_u64
        DW_VAR  ncpus, .Ltype_u64
        DW_VAR  cpus_online, .Ltype_u64
        DW_VAR  ram_size, .Ltype_u64
        DW_VAR  ticks, .Ltype_per_cpu
        DW_VAR  loops, .Ltype_per_cpu
        .byte   0
.Ldebug_info_end:
