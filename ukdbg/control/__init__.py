"""ukdbg/control: talk to running monitors through their control sockets (docs/control.md)."""
