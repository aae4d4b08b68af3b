"""A worker whose memory is held in one of the shapes `introspect memory` tells apart. Commands on
stdin, one JSON line back with what the program knows it did (bytes):
  frag THREADS MIB KEEP    each of THREADS threads allocates MIB MiB of 2-4 KiB bytes and keeps 1 in
                           KEEP (glibc keeps the rest, free, in the threads' arenas)
  tuples N KEEP            N small tuples, 1 in KEEP kept (pymalloc arenas pinned by survivors)
  cleak N                  N x 64 KiB malloc'ed through ctypes, never freed (a C extension's leak)
  pyleak N                 the seeds' leak: N x {"id": i, "data": os.urandom(1024)} in a list
                           (pyleak_bytes: their sizes as sys.getsizeof counts them)
  state                    what is held so far
"""

import ctypes
import json
import os
import sys
import threading

kept_bytes = []  # frag's survivors
kept_tuples = []  # tuples' survivors
global_data_store = []  # pyleak
leaked = []  # cleak: addresses only (ints), never freed
done = {
    "frag_free": 0,
    "frag_kept": 0,
    "tuples_freed": 0,
    "tuples_kept": 0,
    "cleak": 0,
    "pyleak": 0,
    "pyleak_bytes": 0,
}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
lock = threading.Lock()


def _block(size):
    """What an object of ``size`` bytes takes: pymalloc's block (rounded up to 16 bytes) or, with
    PYTHONMALLOC=malloc, glibc's chunk (8 bytes of header, 16-byte steps, 32 at least)."""
    if os.environ.get("PYTHONMALLOC", "").startswith("malloc"):
        return max(32, (size + 8 + 15) // 16 * 16)
    return (size + 15) // 16 * 16


def frag_thread(mib, keep, ready, stop):
    allocated = []
    total = mib << 20
    size_sum = n = 0
    while size_sum < total:
        size = 2048 + (n * 37) % 2048
        allocated.append(os.urandom(size))
        size_sum += size
        n += 1
    own = allocated[::keep]  # every keep-th survives: each pins the free space around it
    kept = sum(len(b) for b in own)
    del allocated
    with lock:
        kept_bytes.extend(own)
        done["frag_free"] += size_sum - kept
        done["frag_kept"] += kept
    ready.set()
    stop.wait()  # the thread stays, as a worker's pool threads do (its arena stays attached)


stop = threading.Event()
print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "frag":
        threads, mib, keep = int(cmd[1]), int(cmd[2]), int(cmd[3])
        evs = []
        for _ in range(threads):
            ev = threading.Event()
            threading.Thread(target=frag_thread, args=(mib, keep, ev, stop), daemon=True).start()
            evs.append(ev)
        for ev in evs:
            ev.wait()
    elif cmd[0] == "tuples":
        n, keep = int(cmd[1]), int(cmd[2])
        big = [(i, i + 1) for i in range(1 << 20, (1 << 20) + n)]
        per = _block(sys.getsizeof(big[0])) + 2 * _block(sys.getsizeof(1 << 20))
        kept_tuples.extend(big[::keep])
        done["tuples_kept"] += len(big[::keep]) * per
        done["tuples_freed"] += (n - len(big[::keep])) * per
        del big
    elif cmd[0] == "cleak":
        for _ in range(int(cmd[1])):
            p = libc.malloc(65536)
            libc.memset(p, 1, 65536)  # touched: resident, as a real leak's buffers are
            leaked.append(p)
        done["cleak"] = len(leaked) * 65536
    elif cmd[0] == "pyleak":
        start = len(global_data_store)
        for i in range(start, start + int(cmd[1])):
            global_data_store.append({"id": i, "data": os.urandom(1024)})
            rec = global_data_store[-1]
            done["pyleak_bytes"] += (
                sys.getsizeof(rec) + sys.getsizeof(rec["data"]) + sys.getsizeof(i)
            )
        done["pyleak"] = len(global_data_store)
    sys.stdout.write(json.dumps(done) + "\n")
    sys.stdout.flush()
stop.set()
