"""Linux guests (issue 17): Debian 12's stock cloud kernel and a busybox initramfs.

``kit`` fetches the packages with ``apt-get download`` into a cache directory and builds
the initramfs in Python; ``probe`` boots them under our stub and reports how far Linux
gets (docs/linux.md).
"""
