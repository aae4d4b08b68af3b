"""The ptrace injector's machine code is exactly its listing, and its frames have the kernel's layout."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from introspect.inject import sigframe, trampoline


def _assemble(listing: str, tmp_path: Path) -> bytes:
    src = tmp_path / "code.s"
    body = "\n".join(line.split(";")[0].rstrip() for line in listing.splitlines())
    src.write_text(".intel_syntax noprefix\n" + body + "\n")
    obj, raw = tmp_path / "code.o", tmp_path / "code.bin"
    subprocess.run(["as", "-o", str(obj), str(src)], check=True, capture_output=True, timeout=30)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True, timeout=30)
    return raw.read_bytes()


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None, reason="GNU as/objcopy not installed")
def test_trampoline_is_its_listing(tmp_path: Path) -> None:
    assert _assemble(trampoline.TRAMPOLINE_ASM, tmp_path) == trampoline.TRAMPOLINE


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None, reason="GNU as/objcopy not installed")
def test_wrapper_is_its_listing(tmp_path: Path) -> None:
    listing = (trampoline.WRAPPER_ASM.replace("PyRun_SimpleString", "0x1122334455667788").replace("SIZE", "0x2000")
               .replace("munmap", "0x0102030405060708"))
    assert _assemble(listing, tmp_path) == trampoline.wrapper_code(0x1122334455667788, 0x0102030405060708, 0x2000)


def test_sigframe_layout() -> None:
    regs = list(range(100, 127))
    uc = sigframe.ucontext(regs, 0xABC0)
    # ucontext: flags, link, stack_t (24), sigcontext (256), sigmask (8)
    assert len(uc) == 8 + 8 + 24 + 256 + 8
    mctx = uc[40:296]
    names = sigframe.REG_NAMES
    got = struct.unpack_from("<18Q", mctx)
    want = [regs[names.index(n)] for n in "r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip eflags".split()]
    assert list(got) == want
    assert struct.unpack_from("<Q", mctx, 18 * 8 + 8 + 4 * 8)[0] == 0xABC0  # fpstate pointer
    # the trampoline writes the mask at ctx + 0x230, which must be uc_sigmask
    assert trampoline.UC + 296 == 0x230


def test_restart_as_the_kernel_would() -> None:
    regs = [0] * 27
    i = sigframe.IDX
    regs[i["orig_rax"]], regs[i["rax"]], regs[i["rip"]] = 0, (1 << 64) - 512, 0x1002  # read, -ERESTARTSYS
    out = sigframe.resume_frame(sigframe.Stopped(regs, b""))
    assert out[i["rax"]] == 0 and out[i["rip"]] == 0x1000
    # -ERESTART_RESTARTBLOCK: rt_sigreturn (our way back) resets the restart block, so a call that
    # can be issued again as is is; one with a relative timeout returns EINTR, as after a signal
    regs[i["orig_rax"]], regs[i["rax"]], regs[i["rdx"]] = 7, (1 << 64) - 516, 0xFFFFFFFF  # poll(.., -1)
    out = sigframe.resume_frame(sigframe.Stopped(regs, b""))
    assert out[i["rax"]] == 7 and out[i["rip"]] == 0x1000
    regs[i["orig_rax"]], regs[i["rsi"]] = 230, 1  # clock_nanosleep(TIMER_ABSTIME)
    out = sigframe.resume_frame(sigframe.Stopped(regs, b""))
    assert out[i["rax"]] == 230 and out[i["rip"]] == 0x1000
    regs[i["rsi"]] = 0  # clock_nanosleep, relative
    out = sigframe.resume_frame(sigframe.Stopped(regs, b""))
    assert out[i["rax"]] == (1 << 64) - 4 and out[i["rip"]] == 0x1002
    regs[i["rdx"]] = 0
    regs[i["orig_rax"]], regs[i["rax"]] = 232, (1 << 64) - 4  # epoll_wait, -EINTR: returned as is
    out = sigframe.resume_frame(sigframe.Stopped(regs, b""))
    assert out[i["rax"]] == (1 << 64) - 4 and out[i["rip"]] == 0x1002
    regs[i["orig_rax"]] = (1 << 64) - 1  # not in a syscall
    assert sigframe.resume_frame(sigframe.Stopped(regs, b""))[i["rip"]] == 0x1002


def test_fpstate_keeps_the_saved_bytes() -> None:
    xstate = bytes(range(256)) * 11  # 2816 bytes
    xstate = xstate[:464] + struct.pack("<Q", 0x2E7) + xstate[472:]
    fp = sigframe.fpstate(xstate)
    assert fp[:464] == xstate[:464] and fp[512:len(xstate)] == xstate[512:]
    magic1, ext, feats, size = struct.unpack_from("<IIQI", fp, 464)
    assert (magic1, ext, feats, size) == (0x46505853, len(xstate) + 4, 0x2E7, len(xstate))
    assert fp[len(xstate):] == struct.pack("<I", 0x46505845)
