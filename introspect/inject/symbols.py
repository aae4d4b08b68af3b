"""Resolve exported C functions to addresses inside the target, from its ELF files and maps.

Pre-resolving lets gdb run with no symbol loading at all (DESIGN.md: 0.085 s pause instead of
0.14-0.30 s) and works on stripped distro builds, where only ``.dynsym`` is left.

The ELF headers are read here with ``struct`` (64-bit little-endian files only, the ones we
inject into): pyelftools cost each CLI run 0.06 s to import and 0.05 s to build its objects for
the 30-190 section headers of libpython, libc and the binary (measured, docs/testing.md).
``tests/unit/test_symbols.py`` checks the result against pyelftools on every interpreter here.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from introspect.maps import Mapping

# STT_FUNC only: an STT_GNU_IFUNC symbol's address is its resolver, which must never be called as
# it.
_STT_FUNC = 2
_SHT_SYMTAB, _SHT_NOBITS, _SHT_DYNSYM = 2, 8, 11
PT_LOAD = 1
EM_X86_64 = 62
_SYM = struct.Struct("<IBBHQQ")
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    vaddr: int
    memsz: int


@dataclass(frozen=True)
class ElfHeaders:
    """What we use of an ELF file's headers: its machine, program and section headers."""

    path: str
    machine: int
    segments: tuple[Segment, ...]
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section | None:
        """The first section of that name (as pyelftools' ``get_section_by_name``)."""
        return next((s for s in self.sections if s.name == name), None)

    def first_load_page(self) -> int:
        """The lowest PT_LOAD vaddr, rounded down to its page (0 when there is none)."""
        loads = [s.vaddr for s in self.segments if s.type == PT_LOAD]
        return (min(loads) & ~0xFFF) if loads else 0

    def read(self, sec: Section) -> bytes:
        if sec.type == _SHT_NOBITS:
            return b""
        with open(self.path, "rb") as f:
            f.seek(sec.offset)
            data = f.read(sec.size)
        if len(data) != sec.size:
            raise ValueError(f"{self.path}: section {sec.name} runs past the end of the file")
        return data


def _read_at(f: BinaryIO, offset: int, size: int, path: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: truncated ELF file")
    return data


def read_headers(path: str) -> ElfHeaders:
    """The headers of a 64-bit little-endian ELF file; ValueError for anything else."""
    with open(path, "rb") as f:
        head = f.read(_EHDR.size)
        if len(head) < _EHDR.size or head[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        if head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        (_ident, _type, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize,
         phnum, shentsize, shnum, shstrndx) = _EHDR.unpack(head)
        raw_sections: list[tuple[int, ...]] = []
        if shoff:
            if shentsize < _SHDR.size:
                raise ValueError(f"{path}: bad section header size {shentsize}")
            if shnum == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
                shnum = _SHDR.unpack(_read_at(f, shoff, _SHDR.size, path))[5]
            table = _read_at(f, shoff, shnum * shentsize, path)
            raw_sections = [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
            if shstrndx == 0xFFFF and raw_sections:  # SHN_XINDEX: in section 0's sh_link
                shstrndx = raw_sections[0][6]
        if phnum == 0xFFFF and raw_sections:  # PN_XNUM: the count is in section 0's sh_info
            phnum = raw_sections[0][7]
        segments: list[Segment] = []
        if phoff and phnum:
            if phentsize < _PHDR.size:
                raise ValueError(f"{path}: bad program header size {phentsize}")
            table = _read_at(f, phoff, phnum * phentsize, path)
            for i in range(phnum):
                p_type, p_flags, _off, p_vaddr, _paddr, _filesz, p_memsz, _align = (
                    _PHDR.unpack_from(table, i * phentsize))
                segments.append(Segment(p_type, p_flags, p_vaddr, p_memsz))
        names = b""
        if raw_sections and shstrndx < len(raw_sections):
            strsec = raw_sections[shstrndx]
            if strsec[1] != _SHT_NOBITS:
                names = _read_at(f, strsec[4], strsec[5], path)
    sections = []
    for sh_name, sh_type, _flags, sh_addr, sh_offset, sh_size, sh_link, *_ in raw_sections:
        end = names.find(b"\0", sh_name)
        name = names[sh_name:end if end >= 0 else len(names)].decode("utf-8", "replace")
        sections.append(Section(name, sh_type, sh_addr, sh_offset, sh_size, sh_link))
    return ElfHeaders(path, machine, tuple(segments), tuple(sections))


def _functions(elf: ElfHeaders, name: str) -> dict[str, int]:
    """Function name -> st_value of one symbol table (.dynsym or .symtab), first one wins."""
    out: dict[str, int] = {}
    sec = elf.section(name)
    if sec is None or sec.type not in (_SHT_SYMTAB, _SHT_DYNSYM):
        return out
    if sec.link >= len(elf.sections):
        raise ValueError(f"{elf.path}: {name} links to no string table")
    strtab = elf.read(elf.sections[sec.link])
    data = elf.read(sec)
    data = data[: len(data) - len(data) % _SYM.size]
    for st_name, st_info, _other, _shndx, st_value, _size in _SYM.iter_unpack(data):
        if st_value and (st_info & 0xF) == _STT_FUNC:
            end = strtab.find(b"\0", st_name)
            sym = strtab[st_name:end].decode("ascii", "replace")
            # glibc versions some names (mmap@@GLIBC_2.2.5): keep the plain one too.
            out.setdefault(sym.split("@")[0], st_value)
    return out


class Functions:
    """The exported functions of one ELF file: ``.dynsym`` first, then ``.symtab``, the first
    entry of a name winning. ``.symtab`` (tens of thousands of entries on a pyenv libpython) is
    read only for a name ``.dynsym`` lacks, which the C API's functions never are."""

    def __init__(self, path: str) -> None:
        self.elf = read_headers(path)
        self.first_vaddr = self.elf.first_load_page()
        self.dynamic = _functions(self.elf, ".dynsym")
        self._symtab: dict[str, int] | None = None

    def _full(self) -> dict[str, int]:
        if self._symtab is None:
            self._symtab = _functions(self.elf, ".symtab")
        return self._symtab

    def get(self, name: str) -> int | None:
        if name in self.dynamic:
            return self.dynamic[name]
        return self._full().get(name)

    def all(self) -> dict[str, int]:
        """Every function, as one dict (what the lookups above answer from)."""
        out = dict(self.dynamic)
        for sym, value in self._full().items():
            out.setdefault(sym, value)
        return out


@functools.lru_cache(maxsize=32)
def _cached(path: str, _stat_key: tuple[int, int, float]) -> Functions:
    return Functions(path)


def functions(path: str) -> Functions:
    st = os.stat(path)
    return _cached(path, (st.st_dev, st.st_ino, st.st_mtime))


def exports(path: str, name: str) -> bool:
    try:
        return functions(path).get(name) is not None
    except (OSError, ValueError):
        return False


def resolve(pid: int, mappings: Sequence[Mapping], path: str, names: list[str]) -> dict[str, int]:
    """Runtime addresses of ``names`` exported by ``path`` (a mapped file, target's view)."""
    maps = [m for m in mappings if m.path == path]
    if not maps:
        raise LookupError(f"{path} is not mapped in process {pid}")
    base_map = min((m for m in maps if m.offset == 0), key=lambda m: m.start, default=None)
    if base_map is None:
        raise LookupError(f"no offset-0 mapping of {path} in process {pid}")
    syms = functions(f"/proc/{pid}/root{path}")
    bias = base_map.start - syms.first_vaddr
    found = {n: syms.get(n) for n in names}
    missing = [n for n, v in found.items() if v is None]
    if missing:
        raise LookupError(f"{path} does not export {', '.join(missing)}")
    return {n: bias + v for n, v in found.items() if v is not None}
