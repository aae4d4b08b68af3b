"""Which ptrace rule refused us, and its fix: the rules as a pure function of the facts.

The integration tests (test_hostile.py) cover other user, non-dumpable and missing CAP_SYS_PTRACE
on real processes; Yama can only be tested for real on a kernel that has it, so its wording is
checked here, and the reading of its sysctl file against a file we write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from introspect import target


def _cause(**facts: object) -> str:
    base: dict[str, object] = {"me": 1000, "target_uid": 1000, "has_cap": False, "yama": None, "dumpable": True}
    base.update(facts)
    cause, fix = target.ptrace_denied_cause(**base)  # type: ignore[arg-type]
    return f"{cause} | {fix}"


@pytest.mark.parametrize(("scope", "words"), [
    (1, ["ptrace_scope is 1", "`sysctl kernel.yama.ptrace_scope=0`", "sudo -E"]),
    (2, ["ptrace_scope is 2", "`sysctl kernel.yama.ptrace_scope=1`", "sudo -E"]),
    (3, ["ptrace_scope is 3", "reboot"]),
])
def test_yama_scope_named_with_its_sysctl(scope: int, words: list[str]) -> None:
    text = _cause(yama=scope)
    for w in words:
        assert w in text, text


def test_yama_1_and_2_do_not_bind_a_tracer_with_cap_sys_ptrace() -> None:
    assert "ptrace_scope" not in _cause(me=0, target_uid=0, has_cap=True, yama=2)
    assert "ptrace_scope is 3" in _cause(me=0, target_uid=0, has_cap=True, yama=3)


def test_other_user_comes_first_and_names_both() -> None:
    text = _cause(me=65534, target_uid=0, yama=1)
    assert "runs as root (uid 0)" in text and "sudo -E" in text and "sudo -u root" in text


def test_root_without_cap_names_the_capability() -> None:
    text = _cause(me=0, target_uid=65534)
    assert "without CAP_SYS_PTRACE" in text and "--cap-add=SYS_PTRACE" in text


def test_capabilities_the_tracee_holds() -> None:
    assert "holds capabilities introspect lacks" in _cause(me=0, target_uid=0, caps_exceed=True)


def test_not_dumpable_fix_depends_on_who_we_are() -> None:
    assert "sudo -E" in _cause(dumpable=False)
    assert "--cap-add=SYS_PTRACE" in _cause(me=0, target_uid=0, dumpable=False)
    assert "not dumpable" not in _cause(me=0, target_uid=0, has_cap=True, dumpable=False)


def test_yama_sysctl_read_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scope = tmp_path / "ptrace_scope"
    monkeypatch.setattr(target, "YAMA_SCOPE", str(scope))
    assert target.yama_ptrace_scope() is None  # no Yama LSM: the file is absent
    scope.write_text("1\n")
    assert target.yama_ptrace_scope() == 1
