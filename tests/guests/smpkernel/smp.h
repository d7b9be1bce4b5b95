/* smpkernel constants shared by boot.S and kernel.c (and checked by smpkernel.ld). */
#ifndef SMP_H
#define SMP_H

#define KERNEL_VMA   0xFFFFFFFF80000000
#define MAX_CPUS     4           /* stacks[] has one stack per vCPU up to this many */
#define STACK_SHIFT  14          /* 16 KiB per vCPU */

#define PORT_CONSOLE  0xE9       /* one byte of console output (QEMU: -debugcon) */
#define PORT_AP_START 0xEB       /* vmstub: eax = vCPU index, rbx = 64-bit entry */

#endif
