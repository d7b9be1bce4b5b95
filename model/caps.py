"""VMM capabilities and the vendor personalities that offer them: one table.

A personality is what a hypervisor lets the debugger switch on, per vCPU, the way VT-x
and SVM do under bhyve (``vm_set_capability``). The model checker explores each one,
the emulated VMM implements each one, and ``--cpu`` / ``cpu =`` name one. ``both`` is
not a vendor: a VMM offering both step mechanisms, which the checker uses to show that
the probe order decides whether the guest's RFLAGS are ever touched; it cannot be
chosen for a VM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Cap(enum.Enum):
    MTRAP_EXIT = "mtrap_exit"    # VT-x monitor trap flag: exit after one instruction
    RFLAGS_TF = "rflags_tf"      # SVM: the hypervisor's hidden RFLAGS.TF + #DB intercept
    MASK_HWINTR = "mask_hwintr"  # hold back interrupt/exception injection during a step
    BPT_EXIT = "bpt_exit"        # int3 (#BP) exits to the stub instead of the guest


@dataclass(frozen=True)
class Personality:
    """``settable``: what ``set_capability`` accepts; ``readable``: what
    ``get_capability`` answers (VMX's ``vmx_getcap`` does not list MASK_HWINTR)."""

    name: str
    settable: frozenset[Cap]
    readable: frozenset[Cap]
    selectable: bool = True  # may a VM be given it (``--cpu``)?


def _p(name: str, *caps: Cap, unreadable: tuple[Cap, ...] = (),
       selectable: bool = True) -> Personality:
    return Personality(name, frozenset(caps), frozenset(caps) - frozenset(unreadable),
                       selectable)


PERSONALITIES: dict[str, Personality] = {
    p.name: p
    for p in (
        _p("intel", Cap.MTRAP_EXIT, Cap.MASK_HWINTR, Cap.BPT_EXIT, unreadable=(Cap.MASK_HWINTR,)),
        _p("amd", Cap.RFLAGS_TF, Cap.MASK_HWINTR, Cap.BPT_EXIT),
        _p("amd-nomask", Cap.RFLAGS_TF, Cap.BPT_EXIT),
        _p("none", Cap.BPT_EXIT),
        _p("both", Cap.MTRAP_EXIT, Cap.RFLAGS_TF, Cap.MASK_HWINTR, Cap.BPT_EXIT,
           unreadable=(Cap.MASK_HWINTR,), selectable=False),
    )
}

VM_PERSONALITIES: tuple[str, ...] = tuple(n for n, p in PERSONALITIES.items() if p.selectable)


def personality(name: str) -> Personality:
    try:
        return PERSONALITIES[name]
    except KeyError:
        raise ValueError(f"unknown personality {name!r} (one of "
                         f"{', '.join(VM_PERSONALITIES)})") from None
