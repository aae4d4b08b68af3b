"""A process whose main thread blocks in C while holding the GIL, as some server loops do (uWSGI
without --enable-threads waits in epoll_wait that way): no Python code can run until it wakes up.

VICTIM_BLOCK=poll (default): blocked in poll() with no timeout; VICTIM_BLOCK=futex: blocked in
sem_wait() on a semaphore nobody posts (a futex wait, like a lock taken with the GIL held).
ctypes.PyDLL calls C without releasing the GIL.
"""

import ctypes
import os

libc = ctypes.PyDLL(None)
mode = os.environ.get("VICTIM_BLOCK", "poll")
sem = ctypes.create_string_buffer(64)  # sizeof(sem_t) is 32 on x86_64
if mode == "futex":
    libc.sem_init(sem, 0, 0)
print("ready %d" % os.getpid(), flush=True)
if mode == "futex":
    libc.sem_wait(sem)
else:
    libc.poll(None, 0, -1)
