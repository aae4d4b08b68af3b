# introspect agent, growth (in-process `growth`): runs in the TARGET, on its main thread.
#
# Imports: nothing at run time; builtin C modules through core's _builtin(). Python 3.8
# syntax. Every rule in core.py's header binds it (no reference to a target object kept
# after we return, no repr() of user objects, never raise out, budget and deadline checked).

MYPY = False
if MYPY:  # the type checker's view of the shared namespace: nothing is imported at run time
    import sys  # noqa: F401
    from typing import Any  # noqa: F401

    from introspect.agent.core import COMMANDS, _gc_facts, _snapshot, time


def cmd_growth(params):  # type: (dict) -> dict
    """Counts per type (gc-tracked objects). The CLI keeps the baseline and the previous look
    (introspect/snapshot/state.py) and computes the changes: nothing of ours stays here."""
    total, counts, scan_s = _snapshot(params)
    return {"objects": total, "counts": counts, "now": time.time(), "gc": _gc_facts(),
            "scan_s": scan_s}


COMMANDS["growth"] = cmd_growth
