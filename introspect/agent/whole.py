# introspect agent, whole: NEVER shipped to a target. Runs wherever a test or a tool executes it
# (runpy.run_path(introspect.agent.AGENT_PATH), or exec'd by a child of any interpreter 3.8+ with
# __file__ set to this path): executes every file of the agent, in the order the bootstrap would
# (introspect.agent.ALL), into this namespace, each compiled under its real path, so its
# definitions are all there and a traceback names the file and its line. Without REQUEST nothing
# runs. Python 3.8 syntax, builtin modules only (the same rules as the files it loads).

_DIR = __file__.rpartition("/")[0] + "/"
for _name in ("core.py", "objects.py", "sizes.py", "growth.py", "backrefs.py", "chains.py",
              "exec.py", "trace.py", "snapshot.py", "copytrace.py", "labels.py", "cwalk.py",
              "walk.py", "memory.py", "run.py"):
    with open(_DIR + _name, "rb") as _f:
        exec(compile(_f.read(), _DIR + _name, "exec"), globals())
del _DIR, _name, _f
