"""Vendor personalities: which capabilities a VM's vCPUs have, like VMX and SVM do."""

from __future__ import annotations

from dataclasses import dataclass

from stub.vmm.api import Cap


@dataclass(frozen=True)
class Personality:
    name: str
    settable: frozenset[Cap]
    # Settable but not readable: VMX's vmx_getcap does not list MASK_HWINTR.
    write_only: frozenset[Cap] = frozenset()

    def readable(self, cap: Cap) -> bool:
        return cap in self.settable and cap not in self.write_only


PERSONALITIES = {
    p.name: p for p in (
        Personality("intel", frozenset({Cap.MTRAP_EXIT, Cap.BPT_EXIT, Cap.MASK_HWINTR}),
                    frozenset({Cap.MASK_HWINTR})),
        Personality("amd", frozenset({Cap.RFLAGS_TF, Cap.BPT_EXIT, Cap.MASK_HWINTR})),
        Personality("amd-nomask", frozenset({Cap.RFLAGS_TF, Cap.BPT_EXIT})),
        Personality("none", frozenset({Cap.BPT_EXIT})),
    )
}


def personality(name: str) -> Personality:
    try:
        return PERSONALITIES[name]
    except KeyError:
        raise ValueError(f"unknown personality {name!r} (one of "
                         f"{', '.join(PERSONALITIES)})") from None
