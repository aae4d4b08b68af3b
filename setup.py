"""Two optional C parts; without a C compiler the install goes on without them:
- the compiled walk step (introspect/agent/_cwalk.c): without it the forked walker stays the
  Python one (agent/walk.py). One stable-ABI (abi3) build serves every target CPython 3.8-3.15;
  the CLI never imports it, the forked copy loads it.
- the CLI's resolve and BFS loops (introspect/snapshot/_graphc.c): without them, numpy's."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "introspect.agent._cwalk",
            ["introspect/agent/_cwalk.c"],
            py_limited_api=True,
            extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra",
                                "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        # the CLI's resolve and BFS loops (introspect/snapshot/_graphc.c): plain C loaded with
        # ctypes (no Python API), numpy's versions where it is not built
        Extension(
            "introspect.snapshot._graphc",
            ["introspect/snapshot/_graphc.c"],
            py_limited_api=True,
            extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra"],
            optional=True,
        ),
    ],
    options={"bdist_wheel": {"py_limited_api": "cp38"}},
)
