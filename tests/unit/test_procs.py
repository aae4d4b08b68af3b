"""Role classification of `introspect ps` on realistic command lines and process titles.

The command lines are what /proc/PID/cmdline holds for each way these servers are started
(a console script runs as `python /venv/bin/celery ...`); the titles are what setproctitle
makes Celery, gunicorn and uWSGI write there instead.
"""

from __future__ import annotations

import pytest

from introspect.procs import Proc, forest, inspectability, select
from introspect.roles import Launch, RoleInput, assign_roles, launch_of

PY = "/srv/venv/bin/python3.11"
EXE = "/usr/bin/python3.11"  # what /proc/PID/exe points at for PY


@pytest.mark.parametrize(("cmdline", "kind", "pool"), [
    ([PY, "/srv/venv/bin/celery", "-A", "proj", "worker", "-P", "gevent", "-c", "100"], "celery", "gevent"),
    ([PY, "-m", "celery", "-A", "proj", "worker", "--pool=prefork", "--loglevel=INFO"], "celery", "prefork"),
    ([PY, "-u", "-X", "dev", "-m", "celery", "--app=proj", "worker", "--concurrency=4"], "celery", "prefork"),
    ([PY, "-mcelery", "-A", "proj", "worker", "-Pthreads"], "celery", "threads"),
    ([PY, "/srv/venv/bin/celery", "worker", "-A", "proj", "--pool", "solo"], "celery", "solo"),
    ([PY, "/srv/venv/bin/celery", "-A", "proj", "worker", "--pool", "processes"], "celery", "prefork"),
    ([PY, "/srv/venv/bin/celery", "-b", "redis://x", "-A", "worker", "beat"], "python", None),  # app named "worker"
    ([PY, "/srv/venv/bin/celery", "-A", "proj", "inspect", "active"], "python", None),
    (["/srv/venv/bin/celery", "-A", "proj", "worker", "-P", "eventlet"], "celery", "eventlet"),
    ([PY, "/srv/venv/bin/gunicorn", "-w", "4", "-k", "gevent", "app:app"], "gunicorn", None),
    ([PY, "-m", "gunicorn", "app:app"], "gunicorn", None),
    (["uwsgi", "--master", "--processes", "2", "--wsgi-file", "app.py"], "uwsgi", None),
    ([PY, "manage.py", "runserver"], "python", None),
    ([PY, "-c", "import celery; print('worker')"], "python", None),
    ([PY], "python", None),
    ([], "python", None),
])
def test_launch_from_command_line(cmdline: list[str], kind: str, pool: str | None) -> None:
    launch = launch_of(cmdline)
    assert (launch.kind, launch.pool, launch.title) == (kind, pool, None)


@pytest.mark.parametrize(("title", "expected"), [
    (["[celeryd: celery@web-1:MainProcess] -active- (-A proj worker -P prefork -c 2)"], Launch("celery", "prefork", "master")),
    (["[celeryd: celery@web-1:MainProcess] -active- (-A proj worker --pool=gevent)"], Launch("celery", "gevent", "master")),
    (["[celeryd: celery@web-1:MainProcess] -active- (worker -A proj)"], Launch("celery", "prefork", "master")),
    (["[celeryd: celery@web-1:ForkPoolWorker-3]"], Launch("celery", "prefork", "worker")),
    # psutil splits a title without NUL separators on spaces
    (["[celeryd:", "celery@web-1:ForkPoolWorker-1]"], Launch("celery", "prefork", "worker")),
    (["gunicorn: master [app:app]"], Launch("gunicorn", None, "master")),
    (["gunicorn: worker [app:app]"], Launch("gunicorn", None, "worker")),
    (["uWSGI master"], Launch("uwsgi", None, "master")),
    (["uWSGI worker 2"], Launch("uwsgi", None, "worker")),
])
def test_launch_from_process_title(title: list[str], expected: Launch) -> None:
    assert launch_of(title) == expected


def roles(*procs: tuple[int, int, list[str], str]) -> dict[int, tuple[str, str | None]]:
    return assign_roles(RoleInput(pid, ppid, launch_of(cmd, exe), exe) for pid, ppid, cmd, exe in procs)


def test_prefork_master_and_children_share_a_command_line() -> None:
    cmd = [PY, "-m", "celery", "-A", "proj", "worker", "--pool=prefork", "-c", "2"]
    # GIVEN a master (parent: a shell, not listed) and two children forked from it, listed child first
    got = roles((101, 100, cmd, EXE), (102, 100, cmd, EXE), (100, 1, cmd, EXE))
    assert got == {101: ("celery-child", "prefork"), 102: ("celery-child", "prefork"), 100: ("celery-master", "prefork")}


def test_default_pool_is_prefork_and_exe_unknown_still_links() -> None:
    cmd = [PY, "/srv/venv/bin/celery", "-A", "proj", "worker"]
    # Another user's process: exe unreadable (""), the parent link decides
    assert roles((10, 1, cmd, ""), (11, 10, cmd, "")) == {10: ("celery-master", "prefork"), 11: ("celery-child", "prefork")}


def test_non_prefork_pools_have_no_children() -> None:
    gevent = [PY, "/srv/venv/bin/celery", "-A", "proj", "worker", "-P", "gevent"]
    script = [PY, "/srv/app/convert.py"]
    # A gevent worker that runs a helper script of the same interpreter: the helper is plain python
    assert roles((20, 1, gevent, EXE), (21, 20, script, EXE)) == {20: ("celery-worker", "gevent"), 21: ("python", None)}


def test_children_with_another_executable_are_not_pool_children() -> None:
    cmd = [PY, "-m", "celery", "-A", "proj", "worker"]
    other = ["/usr/bin/python3.12", "/srv/tool.py"]
    got = roles((30, 1, cmd, EXE), (31, 30, cmd, EXE), (32, 30, other, "/usr/bin/python3.12"), (33, 31, cmd, EXE))
    # 33 was forked by a child (a task calling os.fork()): neither a master nor one of its children
    assert got == {30: ("celery-master", "prefork"), 31: ("celery-child", "prefork"), 32: ("python", None),
                   33: ("python", None)}


def test_billiard_spawn_children_count_as_pool_children() -> None:
    cmd = [PY, "-m", "celery", "-A", "proj", "worker"]
    spawned = [PY, "-c", "from billiard.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)", "--multiprocessing-fork"]
    assert roles((40, 1, cmd, EXE), (41, 40, spawned, EXE)) == {40: ("celery-master", "prefork"), 41: ("celery-child", "prefork")}


def test_setproctitle_titles() -> None:
    master = ["[celeryd: celery@web-1:MainProcess] -active- (-A proj worker -c 2)"]
    child = ["[celeryd: celery@web-1:ForkPoolWorker-1]"]
    assert roles((50, 1, master, EXE), (51, 50, child, EXE)) == {50: ("celery-master", "prefork"), 51: ("celery-child", "prefork")}
    g_master, g_worker = ["gunicorn: master [app:app]"], ["gunicorn: worker [app:app]"]
    assert roles((60, 1, g_master, EXE), (61, 60, g_worker, EXE)) == {60: ("gunicorn-master", None), 61: ("gunicorn-worker", None)}


def test_gunicorn_and_uwsgi_without_titles() -> None:
    gunicorn = [PY, "/srv/venv/bin/gunicorn", "-w", "2", "app:app"]
    uwsgi = ["uwsgi", "--master", "--processes", "2", "--wsgi-file", "app.py"]
    got = roles((70, 1, gunicorn, EXE), (71, 70, gunicorn, EXE), (72, 70, gunicorn, EXE),
                (80, 1, uwsgi, "/usr/bin/uwsgi-core"), (81, 80, uwsgi, "/usr/bin/uwsgi-core"))
    assert got == {70: ("gunicorn-master", None), 71: ("gunicorn-worker", None), 72: ("gunicorn-worker", None),
                   80: ("uwsgi-master", None), 81: ("uwsgi-worker", None)}


def proc(pid: int, ppid: int, rss: int, role: str = "python", user: str = "app", cmd: str = "python x.py",
         children: list[int] | None = None, status: str = "sleeping") -> Proc:
    return Proc(pid, ppid, user, 1000, "python", EXE, cmd.split(), status, 0.0, (3, 11), rss, None, role=role,
                children=children or [])


def test_filters_relink_the_tree_and_forest_sorts_by_rss() -> None:
    # GIVEN a celery master with two children and an unrelated script of another user
    procs = [proc(1, 0, 10, "celery-master", cmd="celery -A proj worker", children=[2, 3]),
             proc(2, 1, 30, "celery-child", cmd="celery -A proj worker"),
             proc(3, 1, 50, "celery-child", cmd="celery -A proj worker"),
             proc(9, 0, 20, user="ops", cmd="python /srv/cron.py")]
    # WHEN shown whole: roots by RSS (the master's 10 is below the script's 20), children by RSS
    assert [(d, p.pid) for d, p in forest(procs)] == [(0, 9), (0, 1), (1, 3), (1, 2)]
    # WHEN filtered to children only: they become roots, still largest first
    only = select(procs, role="celery-child")
    assert [(d, p.pid) for d, p in forest(only)] == [(0, 3), (0, 2)]
    assert [p.pid for p in select(procs, role="celery")] == [1, 2, 3]
    assert select(procs, role="celery")[0].children == [2, 3]
    assert [p.pid for p in select(procs, user="ops")] == [9]
    assert [p.pid for p in select(procs, user="1000")] == [1, 2, 3, 9]
    assert [p.pid for p in select(procs, pattern="CRON")] == [9]
    # the filtered copies do not change the originals
    assert procs[0].children == [2, 3]


def test_zombie_is_not_inspectable_and_nothing_is_read() -> None:
    # A pid that cannot exist: the answer must come from the recorded state alone
    assert inspectability(proc(2**22 + 1, 1, 0, status="zombie")) == (False, "zombie")
