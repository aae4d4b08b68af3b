"""The seeds' leak, exactly as written there: dicts of atomic values (untracked by gc) holding
1 KiB of bytes each, appended to a module-level list. Commands on stdin (one JSON line back):
  leak N    append N records   |   count   len(global_data_store)   |   threads N  start N idle threads
  ballast N   N more objects, half gc-tracked (lists), half not (dicts of atomic values)
  sessions N  N more instances of the class Session (gc-tracked, each with an attribute dict),
              kept in the module-level registry `sessions` keyed by id: a tracked-object leak
Set IGNORE_SIGCHLD=1 to run with SIGCHLD ignored, WARN=1 to print warnings' state at start.
"""

import json
import os
import signal
import sys
import threading

if os.environ.get("IGNORE_SIGCHLD"):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)

global_data_store = []
ballast = []
sessions = {}


class Session:
    def __init__(self, sid):
        self.sid = sid
        self.attrs = {"user": "user-%d" % sid, "hits": sid}


def process_item(item_id):
    global_data_store.append({"id": item_id, "data": os.urandom(1024)})


def open_session():
    s = Session(len(sessions))
    sessions[id(s)] = s


def park(ev):
    parked_local = ["held by a parked thread's frame"]  # noqa: F841
    ev.wait()


stop = threading.Event()
print("ready %d" % os.getpid(), flush=True)
next_id = 0
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "leak":
        for _ in range(int(cmd[1])):
            process_item(next_id)
            next_id += 1
        out = {"count": len(global_data_store)}
    elif cmd[0] == "ballast":
        for i in range(int(cmd[1]) // 2):
            ballast.append([{"n": i}])
        out = {"ballast": len(ballast)}
    elif cmd[0] == "sessions":
        for _ in range(int(cmd[1])):
            open_session()
        out = {"sessions": len(sessions)}
    elif cmd[0] == "threads":
        for _ in range(int(cmd[1])):
            threading.Thread(target=park, args=(stop,), daemon=True).start()
        out = {"threads": threading.active_count()}
    else:
        out = {"count": len(global_data_store)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
stop.set()
