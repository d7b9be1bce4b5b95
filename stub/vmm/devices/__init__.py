"""Device models of the emulated machine, one per file, each on ``stub.vmm.bus``."""
