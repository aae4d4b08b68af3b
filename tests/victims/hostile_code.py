"""A compromised worker that tries to get its code run in other processes through introspect.

- sys.modules["marshal"] is a look-alike whose dumps() returns a payload of its choice (the way a
  target once handed its compiled agent back to the CLI, which shipped it to the next process);
- a thread watches the run directories introspect makes for it and writes the payload, with this
  interpreter's own code-file header, into agent.code and agent.code.new.
The payload appends the pid of whatever process runs it to $HOSTILE_MARKER. $HOSTILE_MODE picks
"marshal", "plant" or both (the default): a planted file the worker loads itself would keep it from
compiling, so each attack is also tried alone. Python 3.8 syntax.

Protocol: prints "ready <pid>"; then "state" on stdin -> {"writes": files written so far}.
"""

import importlib.util
import json
import marshal as _real_marshal
import os
import select
import sys
import threading
import time
import types

MARKER = os.environ["HOSTILE_MARKER"]
payload = compile(
    "import os\nwith open(%r, 'a') as f:\n    f.write('%%d\\n' %% os.getpid())\n" % MARKER,
    "<payload>",
    "exec",
)
HEADER = (
    importlib.util.MAGIC_NUMBER
    + (" %x %s\n" % (sys.hexversion, getattr(sys, "abiflags", "?"))).encode()
)
BYTES = HEADER + _real_marshal.dumps(payload)

fake = types.ModuleType("marshal")
fake.__dict__.update({k: v for k, v in vars(_real_marshal).items() if not k.startswith("__")})
fake.dumps = lambda obj, *a: _real_marshal.dumps(
    payload
)  # what a target that compiled would hand back
MODE = os.environ.get("HOSTILE_MODE", "marshal,plant").split(",")
if "marshal" in MODE:
    sys.modules["marshal"] = fake
writes = []


def plant():
    mine = "introspect-%d-" % os.getpid()
    while True:
        try:
            names = [n for n in os.listdir("/tmp") if n.startswith(mine)]
        except OSError:
            names = []
        for n in names:
            for f in ("agent.code", "agent.code.new"):
                path = "/tmp/%s/%s" % (n, f)
                try:
                    if os.path.exists(path):
                        os.unlink(path)
                    with open(path, "xb") as fh:
                        fh.write(BYTES)
                    writes.append(path)
                except OSError:
                    pass
        time.sleep(0.0005)


if "plant" in MODE:
    threading.Thread(target=plant, daemon=True).start()
print("ready %d" % os.getpid(), flush=True)
fd = sys.stdin.fileno()
buf = b""
while True:
    ready, _, _ = select.select([fd], [], [], 0.01)
    if not ready:
        continue
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line.strip() == b"state":
            sys.stdout.write(json.dumps({"writes": len(writes)}) + "\n")
            sys.stdout.flush()
