"""An idle process whose main thread waits in poll() with no timeout (GIL released), as a server
loop built on select.poll does. After a ptrace stop the kernel resumes that wait as
restart_syscall, which must still count as parked."""

import os
import select

print("ready %d" % os.getpid(), flush=True)
select.poll().poll()
