"""Talking to a VOMS attribute authority: the wire codec (both sides) and the upstream client.

`wire` is sans-I/O and shared by proxyd's client of the VO's VOMS server and
by proxyd's own `[aa]` endpoint; `client` and `upstream` do the networking.
"""
