"""ukdbg/kvm: thin, policy-free wrappers over /dev/kvm (one class per file descriptor).

Knows nothing of hvt, gdb or cores. Import the submodules directly.
"""
