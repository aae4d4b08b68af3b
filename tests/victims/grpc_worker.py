"""A gRPC worker: a real grpcio server (a thread pool of GRPC_WORKER_SERVERS handlers) and
GRPC_WORKER_CLIENTS client threads making continuous unary calls to it over loopback, in one process.
gRPC's C core and its Cython layer register pthread_atfork handlers when fork support is enabled
(GRPC_ENABLE_FORK_SUPPORT=1): they run in this process whenever anything forks it, our agent included.

No generated stubs: a generic handler for /introspect.Echo/Echo, bytes in and out (no serializer:
grpcio passes bytes through). Each answered call keeps an EchoRecord in a bounded deque (`served`),
a type of the application's own for backrefs.

Protocol as busy.py: "ready <pid>" on stdout once the first call succeeded, then one command per
stdin line, one JSON line back:
  state   calls answered (ok), failed (errors, the last few messages), served records, threads, RSS
Environment: GRPC_WORKER_CLIENTS (default 3), GRPC_WORKER_SERVERS (default 4), GRPC_WORKER_PAUSE
(seconds between a client's calls, default 0.002), and gRPC's own GRPC_* variables.
"""

import collections
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

METHOD = "/introspect.Echo/Echo"
CLIENTS = int(os.environ.get("GRPC_WORKER_CLIENTS", "3"))
SERVERS = int(os.environ.get("GRPC_WORKER_SERVERS", "4"))
PAUSE = float(os.environ.get("GRPC_WORKER_PAUSE", "0.002"))

lock = threading.Lock()
ok = [0]
handled = [0]
errors = []
served = collections.deque(maxlen=200)
stop = threading.Event()


class EchoRecord:
    def __init__(self, n, payload):
        self.n = n
        self.payload = payload


def echo(request, context):
    with lock:
        handled[0] += 1
        served.append(EchoRecord(handled[0], request))
    return request


def client(stub, k):
    n = 0
    while not stop.is_set():
        n += 1
        body = ("client %d call %d" % (k, n)).encode()
        try:
            answer = stub(body, timeout=10)
            if answer != body:
                raise ValueError("wrong answer %r to %r" % (answer[:40], body[:40]))
            with lock:
                ok[0] += 1
        except Exception as exc:  # counted and reported by "state": the test asserts there are none
            with lock:
                errors.append("%s: %s" % (type(exc).__name__, str(exc)[:300]))
        if PAUSE:
            stop.wait(PAUSE)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVERS))
    handler = grpc.method_handlers_generic_handler("introspect.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel("127.0.0.1:%d" % port)
    stub = channel.unary_unary(METHOD)
    threads = [threading.Thread(target=client, args=(stub, k), name="grpc-client-%d" % k, daemon=True)
               for k in range(CLIENTS)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 20
    while ok[0] == 0 and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready %d" % os.getpid(), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if not cmd:
            continue
        if cmd == "state":
            with lock:
                out = {"ok": ok[0], "handled": handled[0], "n_errors": len(errors), "errors": errors[-5:],
                       "served": len(served), "threads": threading.active_count(), "rss": rss(),
                       "grpc": grpc.__version__, "fork_support": os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "")}
        else:
            out = {"unknown": cmd}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    stop.set()
    for th in threads:
        th.join(15)
    channel.close()
    server.stop(5).wait(10)


main()
