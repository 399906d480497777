"""The two recommendation modes and what each means for candidates, labels and evaluation.

``winback``: what the user will order next, their favourites included (a merchant they ordered from may be
recommended and counts as a hit). ``discovery``: only merchants the user never ordered from. Each maps to the
generators' ``exclude_seen`` flag.
"""

WINBACK = "winback"
DISCOVERY = "discovery"
# name -> exclude_seen
MODES = {WINBACK: False, DISCOVERY: True}
MODE_MEANINGS = {
    WINBACK: "favourites count: merchants the user ordered from may be recommended",
    DISCOVERY: "only merchants the user never ordered from",
}


def exclude_seen(mode: str) -> bool:
    """Whether ``mode`` leaves out merchants the user already ordered from; a clear error for unknown modes."""
    if mode not in MODES:
        raise ValueError(f"unknown recommendation mode {mode!r}; known: {', '.join(MODES)}")
    return MODES[mode]
