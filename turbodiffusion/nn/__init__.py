"""Drop-in modules built on the suite's ops (attention, low-bit linears, fused norms)."""
