"""inject/symbols.py reads ELF headers and symbol tables with ``struct``: on every interpreter of
this machine (its binary, its libpython, its libc, as mapped by a running one), it finds exactly
what pyelftools finds."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from introspect.inject import symbols
from tests.conftest import INTERPS, Interp

_MAPPED = ("import os, re, sys; exe = os.path.realpath(sys.executable); "
           "print('\\n'.join(sorted({l.split(None, 5)[5].strip() for l in "
           "open('/proc/self/maps') if re.search(r'/(libpython[^/]*\\.so|libc[.-][^/]*so)', l) "
           "or l.rstrip().endswith(exe)})))")


def _elf_files(interp: Interp) -> list[str]:
    """The ELF files a running interpreter of this kind maps: binary, libpython if any, libc."""
    out = subprocess.run([interp.path, "-S", "-c", _MAPPED], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [line for line in out.splitlines() if line.startswith("/")]


def _pyelftools_functions(path: str) -> tuple[dict[str, int], int]:
    """What symbols.py returned when pyelftools read the headers (its code before, verbatim)."""
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [seg["p_vaddr"] for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        for name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(name)
            if not isinstance(sec, SymbolTableSection):
                continue
            strtab = elf.get_section(sec["sh_link"]).data()
            for st_name, st_info, _other, _shndx, st_value, _size in struct.iter_unpack(
                "<IBBHQQ", sec.data()
            ):
                if st_value and (st_info & 0xF) == 2:
                    end = strtab.find(b"\0", st_name)
                    sym = strtab[st_name:end].decode("ascii", "replace")
                    out.setdefault(sym.split("@")[0], st_value)
    return out, (min(loads) & ~0xFFF) if loads else 0


FILES = sorted({path for interp in INTERPS for path in _elf_files(interp)})


def test_every_interpreter_kind_has_its_files() -> None:
    # the comparisons below cover each kind's binary and libc (and libpython where it has one)
    assert INTERPS, "no interpreter found on this machine"
    for interp in INTERPS:
        files = _elf_files(interp)
        assert any("libc" in Path(f).name for f in files), (interp.id, files)
        assert len(files) >= 2, (interp.id, files)
        # the C API is found in one of them, as target.py looks for it
        assert any(symbols.exports(f, "Py_AddPendingCall") for f in files), (interp.id, files)


@pytest.mark.parametrize("path", FILES)
def test_functions_are_pyelftools_ones(path: str) -> None:
    expected, first_vaddr = _pyelftools_functions(path)
    found = symbols.Functions(path)
    assert found.first_vaddr == first_vaddr
    assert found.all() == expected
    for name in ("Py_AddPendingCall", "PyRun_SimpleString", "munmap", "mmap", "no_such_function"):
        assert found.get(name) == expected.get(name)
    assert expected, f"{path}: no functions at all"


@pytest.mark.parametrize("path", FILES)
def test_headers_are_pyelftools_ones(path: str) -> None:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        sections = [(s.name, s["sh_addr"], s["sh_offset"], s["sh_size"], s["sh_link"])
                    for s in elf.iter_sections()]
        segments = [(s["p_flags"], s["p_vaddr"], s["p_memsz"]) for s in elf.iter_segments()]
        machine = elf["e_machine"]
    ours = symbols.read_headers(path)
    assert [(s.name, s.addr, s.offset, s.size, s.link) for s in ours.sections] == sections
    assert [(s.flags, s.vaddr, s.memsz) for s in ours.segments] == segments
    assert (ours.machine == 62) == (machine == "EM_X86_64")
    runtime = ours.section(".PyRuntime")
    if runtime is not None:
        with open(path, "rb") as f:
            theirs = ELFFile(f).get_section_by_name(".PyRuntime")
            assert theirs is not None and theirs["sh_addr"] == runtime.addr


def test_not_elf_is_a_plain_refusal(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("print('hello')\n")
    with pytest.raises(ValueError, match="not an ELF file"):
        symbols.read_headers(str(script))
    assert symbols.exports(str(script), "Py_AddPendingCall") is False
    short = tmp_path / "short"
    short.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 80)  # a header, no section table in range
    data = bytearray(short.read_bytes())
    struct.pack_into("<Q", data, 0x28, 10_000)  # e_shoff past the end
    struct.pack_into("<HH", data, 0x3A, 64, 3)  # e_shentsize, e_shnum
    short.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated"):
        symbols.read_headers(str(short))
