"""Fuzz tests (hypothesis only): the RSP layer, the session over a fake VM, the server."""
