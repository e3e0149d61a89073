"""ukdbg/units.py: byte sizes for people, one rule everywhere (inspector, gdb monitor,
ukdbg ps/status, progress bars): binary units, a decimal only where it says something
("4 KiB", "1.5 MiB", "16 GiB", "100 B"). Standard library only (the run path may use it).
"""


def size(n: int, sep: str = " ") -> str:
    """sep goes between number and unit ("" for tables read by awk: 8MiB)."""
    n = int(n)
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0 or n >= 10 << shift:
            return f"{n / (1 << shift):.1f}".removesuffix(".0") + sep + unit
    return f"{n}{sep}B"
