# Runs inside gdb (gdb -x). Steps through flags_probe with stepi and checks, after
# every pushf, that the flags image on the stack does not carry TF (bit 8).
import gdb

STEPS = int(gdb.convenience_variable("steps") or 200)
arch = gdb.selected_frame().architecture()
isr = int(gdb.parse_and_eval("&timer_isr"))
pushf_images = bad = steps = in_timer_isr = 0
for _ in range(STEPS):
    pc = int(gdb.parse_and_eval("$pc"))
    decoded = arch.disassemble(pc)[0]
    insn = decoded["asm"].split()[0]
    gdb.execute("stepi", to_string=True)
    steps += 1
    if int(gdb.parse_and_eval("$pc")) == isr:
        in_timer_isr += 1
    executed = int(gdb.parse_and_eval("$pc")) == pc + decoded["length"]
    if insn.startswith("pushf") and executed:  # not pre-empted by an interrupt
        image = int(gdb.parse_and_eval("*(unsigned long long *)$rsp"))
        pushf_images += 1
        if image & 0x100:
            bad += 1
            print(f"LEAK at {pc:#x}: pushed {image:#x}")
    if int(gdb.parse_and_eval("$eflags")) & 0x100:
        bad += 1
        print(f"TF visible in eflags at {pc:#x}")
print(f"RESULT steps={steps} pushf_images={pushf_images} bad={bad} "
      f"tf_leaks={int(gdb.parse_and_eval('tf_leaks'))} timer_entries={in_timer_isr}")
