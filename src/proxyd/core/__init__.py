"""The core of proxyd: every operation an edge offers, each through the gate.

The edges (MyProxy, HTTPS, the CLIs) call the core; only the core reaches the
store. See docs/architecture.md.
"""
