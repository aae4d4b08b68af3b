"""The machine code the ptrace injector runs on the thread it borrows, and where it puts it.

Four things, all fixed bytes and offsets (``ptrace.py`` has the design and does the injection):
the trampoline (its listing and the bytes assembled from it), the pending-call wrapper copied
into the busy mode's page, the layout of the context block the trampoline reads (parameters,
results, the signal frame), and the *cave*: the unused tail of libc's last text page that holds
the trampoline.
"""

from __future__ import annotations

import functools
import os

from introspect.inject import symbols
from introspect.target import Target

# -- the machine code --------------------------------------------------------------------------
# Assembled with GNU as from the listing below (tests/unit/test_ptrace_code.py reassembles it when
# `as` is installed and compares). r15 = the context block, rbx = the page / the GIL state.
TRAMPOLINE_ASM = """\
    mov r15, rdi
    cld
    xor edi, edi                 ; rt_sigprocmask(SIG_BLOCK, NULL, &uc_sigmask, 8): read the mask
    xor esi, esi
    lea rdx, [r15+0x230]
    mov r10d, 8
    mov eax, 14
    syscall
    cmp qword ptr [r15], 2
    je idle
    xor edi, edi                 ; mmap(NULL, size, PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS, -1, 0)
    mov rsi, [r15+0x08]
    mov edx, 3
    mov r10d, 0x22
    mov r8, -1
    xor r9d, r9d
    mov eax, 9
    syscall
    mov [r15+0x48], rax
    cmp rax, -4095
    jae done
    mov rbx, rax
    mov rdi, rax                 ; copy wrapper + text into the page
    mov rsi, [r15+0x78]
    mov rcx, [r15+0x10]
    rep movsb
    mov rdi, rbx                 ; mprotect(page, size, PROT_READ|PROT_EXEC)
    mov rsi, [r15+0x08]
    mov edx, 5
    mov eax, 10
    syscall
    mov [r15+0x50], rax
    test rax, rax
    jnz unmap
    mov rdi, rbx                 ; Py_AddPendingCall(page, page)
    mov rsi, rbx
    call qword ptr [r15+0x18]
    cdqe
    mov [r15+0x58], rax
    test eax, eax
    jz done
unmap:
    mov rdi, rbx                 ; munmap(page, size)
    mov rsi, [r15+0x08]
    mov eax, 11
    syscall
    jmp done
idle:
    call qword ptr [r15+0x28]    ; PyGILState_Check()
    cdqe
    mov [r15+0x60], rax
    test eax, eax
    jz run
    call qword ptr [r15+0x30]    ; PyEval_GetFrame(): NULL when no Python frame executes
    mov [r15+0x68], rax
    test rax, rax
    jnz done
run:
    mov qword ptr [r15+0x70], 1
    mov rdi, r15                 ; marker: the tracer reads the decision and detaches here
    mov eax, 39
    syscall
    call qword ptr [r15+0x38]    ; PyGILState_Ensure()
    mov ebx, eax
    mov rdi, [r15+0x78]
    call qword ptr [r15+0x20]    ; PyRun_SimpleString(text)
    cdqe
    mov [r15+0x58], rax
    mov edi, ebx
    call qword ptr [r15+0x40]    ; PyGILState_Release(state)
    jmp restore
done:
    mov rdi, r15                 ; marker
    mov eax, 39
    syscall
restore:
    lea rsp, [r15+0x108]         ; &frame.uc
    mov eax, 15                  ; rt_sigreturn: every register, the FPU state and the mask back
    syscall
    ud2
"""
TRAMPOLINE = bytes.fromhex(
    "4989fffc31ff31f6498d973002000041ba08000000b80e0000000f0549833f020f848200000031ff"
    "498b7708ba0300000041ba2200000049c7c0ffffffff4531c9b8090000000f0549894748483d01f0"
    "ffff0f83990000004889c34889c7498b7778498b4f10f3a44889df498b7708ba05000000b80a0000"
    "000f05498947504885c075144889df4889de41ff571848984989475885c074594889df498b7708b8"
    "0b0000000f05eb4941ff572848984989476085c0740d41ff5730498947684885c0752e49c7477001"
    "0000004c89ffb8270000000f0541ff573889c3498b7f7841ff572048984989475889df41ff5740eb"
    "0a4c89ffb8270000000f05498da708010000b80f0000000f050f0b"
)
# The pending call, at the start of the page: PyRun_SimpleString(page + 0x100), then a tail call
# munmap(page, size), whose 0 is the pending call's "success" (the bootstrap never raises).
WRAPPER_ASM = """\
    endbr64
    push rbx
    mov rbx, rdi
    lea rdi, [rbx+0x100]
    movabs rax, PyRun_SimpleString
    call rax
    mov rdi, rbx
    mov esi, SIZE
    pop rbx
    movabs rax, munmap
    jmp rax
"""
_WRAPPER_HEX = "f30f1efa534889fb488dbb0001000048b8{run}ffd04889dfbe{size}5b48b8{unmap}ffe0"
TEXT_OFFSET = 0x100

# -- context block layout (offsets from its 64-aligned start) --------------------------------
P_MODE, P_SIZE, P_BLOBLEN = 0x00, 0x08, 0x10
P_FUNCS = 0x18  # AddPendingCall, RunSimpleString, GILState_Check, GetFrame, Ensure, Release
R_MMAP, R_PROT, R_RC, R_HELD, R_FRAME, R_STAGE = 0x48, 0x50, 0x58, 0x60, 0x68, 0x70
P_BLOB = 0x78
FRAME = 0x100  # rt_sigframe: pretcode, then ucontext at 0x108
UC = 0x108
MCTX = UC + 40
FPSTATE = 0x300
MODE_BUSY, MODE_PARKED = 1, 2

# The C functions whose addresses the block carries at P_FUNCS, in this order.
PY_FUNCS = ["Py_AddPendingCall", "PyRun_SimpleString", "PyGILState_Check", "PyEval_GetFrame",
            "PyGILState_Ensure", "PyGILState_Release"]


@functools.lru_cache(maxsize=32)
def _cave_offsets(path: str, _key: tuple[int, int, float]) -> tuple[int, int]:
    """(first PT_LOAD vaddr page, end of the last executable PT_LOAD) of an ELF file."""
    elf = symbols.read_headers(path)
    if elf.machine != symbols.EM_X86_64:
        raise ValueError(f"{path} is not an x86_64 ELF file")
    ends = [s.vaddr + s.memsz for s in elf.segments if s.type == symbols.PT_LOAD and s.flags & 1]
    if not ends:
        raise ValueError(f"{path} has no executable segment")
    return elf.first_load_page(), max(ends)


def find_cave(target: Target, path: str) -> int:
    """Address of unused executable bytes (the tail of the last text page) large enough for us."""
    host = target.host_path(path)
    st = os.stat(host)
    first, end = _cave_offsets(host, (st.st_dev, st.st_ino, st.st_mtime))
    maps = [m for m in target.mappings if m.path == path]
    base = min((m.start for m in maps if m.offset == 0), default=None)
    if base is None:
        raise LookupError(f"{path} is not mapped at offset 0")
    start = (base - first + end + 15) & ~15
    page_end = (base - first + end + 0xFFF) & ~0xFFF
    if page_end - start < len(TRAMPOLINE):
        raise LookupError(f"only {page_end - start} unused bytes at the end of {path}'s text")
    if not any(m.start <= start and page_end <= m.end and m.perms.startswith("r-x") for m in maps):
        raise LookupError(f"the end of {path}'s text is not mapped executable")
    return start


def wrapper_code(run: int, unmap: int, size: int) -> bytes:
    """WRAPPER_ASM's bytes for these addresses of PyRun_SimpleString and munmap, and page size."""
    return bytes.fromhex(
        _WRAPPER_HEX.format(run=run.to_bytes(8, "little").hex(),
                            size=size.to_bytes(4, "little").hex(),
                            unmap=unmap.to_bytes(8, "little").hex())
    )


def page_size(text: bytes) -> int:
    """The busy mode's page: the wrapper, then the bootstrap text at TEXT_OFFSET, whole pages."""
    return (TEXT_OFFSET + len(text) + 0xFFF) & ~0xFFF
