"""ukdbg/control/wire.py: the control protocol's JSON, through json's C accelerator alone.

`import json` loads json.decoder, whose regular expressions pull in re and enum: ~10 ms
that neither a monitor's first request nor `ukdbg ps` should pay. _json (C) has the
same scanner and encoder that json uses; only what they read from json's classes is
supplied here, so loads and dumps give exactly json.loads and json.dumps results.
(For a few malformed strings, such as a raw control character, _json itself imports
json.decoder to raise its error: once, and only for bad input.)
"""

_scan = None
_encode = None


class _ScanContext:
    """What _json.make_scanner reads from json.JSONDecoder (all builtins here)."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float
    memo = {}


def _default(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _setup():
    global _scan, _encode
    try:
        import _json
        _scan = _json.make_scanner(_ScanContext())
        enc = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, True)
        _encode = lambda o: "".join(enc(o, 0))                # noqa: E731
    except (ImportError, AttributeError, TypeError):         # no C accelerator
        import json
        _scan = lambda s, i: (json.loads(s[i:]), len(s))       # noqa: E731
        _encode = json.dumps


def loads(data):
    """json.loads of one line (bytes as UTF-8, or str); ValueError if it is not JSON."""
    if _scan is None:
        _setup()
    text = (data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data) \
        .lstrip(" \t\r\n")
    try:
        obj, end = _scan(text, 0)
    except StopIteration as e:
        raise ValueError(f"not JSON (at character {e.value})") from None
    if text[end:].strip(" \t\r\n"):
        raise ValueError(f"extra data after the JSON value (at character {end})")
    return obj


def dumps(obj) -> str:
    """json.dumps(obj) with the default settings."""
    if _encode is None:
        _setup()
    return _encode(obj)
