"""ukdbg/tender: the hvt tender: loader, boot state, vCPU loop, hypercall modules.

The only package that imports ukdbg.kvm.
"""
