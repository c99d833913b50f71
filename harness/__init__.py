"""The local-cluster harness: a real control plane, loopback "pods", real named.

Used by the tests and the demo; not part of the shipped package.
"""
