"""``contained classroom``: the teacher's commands (root), registered by `contained.cli`.

Part of `contained.classroom`. They correspond to::

    contained classroom init                  write jupyterhub_config.py, check the machine
    contained classroom init --tljh           write TLJH's config snippet (Delegate=yes), check
    contained classroom init --dry-run        print the config instead of writing anything
    contained classroom delegate ada          mkdir + chown ada's cgroups (see `delegation`)
    contained classroom delegate ada --move PID     echo PID > .../server/cgroup.procs
    contained classroom undelegate ada        kill her containers, rmdir her cgroups
"""

from pathlib import Path


def add_classroom(commands) -> None:
    parser = commands.add_parser(
        "classroom", help="a classroom on this machine: JupyterHub, delegated cgroups (root)",
        description="Set up JupyterHub for rootless students and hand each a cgroup, so "
                    "their containers' limits (-m, --cpus, --pids-limit) work without root.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write jupyterhub_config.py and check the machine")
    init.add_argument("--dir", metavar="DIR",
                      help="where to write the config (default /etc/jupyterhub, with --tljh "
                           "/opt/tljh/config/jupyterhub_config.d)")
    init.add_argument("--tljh", action="store_true",
                      help="for The Littlest JupyterHub: a snippet giving each student's "
                           "systemd unit Delegate=yes and the budget as the unit's limits")
    init.add_argument("--dry-run", action="store_true",
                      help="print the config and check the machine; write nothing")
    init.add_argument("--port", type=int, default=8000, help="the hub's port on 127.0.0.1")
    init.add_argument("--admin", action="append", default=[], metavar="USER",
                      help="a hub admin (repeatable)")
    _budget_options(init)
    init.set_defaults(func=run_init)
    delegate = actions.add_parser("delegate", help="hand USER a cgroup of their own")
    delegate.add_argument("user", metavar="USER")
    delegate.add_argument("--move", type=int, action="append", default=[], metavar="PID",
                          help="move USER's process PID (their Jupyter server) into it")
    _budget_options(delegate)
    delegate.set_defaults(func=run_delegate)
    undelegate = actions.add_parser("undelegate", help="take USER's cgroup back (kills "
                                                       "their containers)")
    undelegate.add_argument("user", metavar="USER")
    undelegate.set_defaults(func=run_undelegate)


def _budget_options(parser) -> None:
    group = parser.add_argument_group(
        "budget", "what all of one student's containers may use together (default: "
                  "the classroom's, from /etc/contained/classroom.json, written by init)")
    group.add_argument("--memory", metavar="SIZE", help="e.g. 2G")
    group.add_argument("--cpus", metavar="N", help="e.g. 1.5")
    group.add_argument("--pids", type=int, metavar="N", help="e.g. 512")


def _budget(args):
    from contained.classroom import delegation

    saved = delegation.load_budget()
    return delegation.Budget(memory=args.memory or saved.memory, cpus=args.cpus or saved.cpus,
                             pids=args.pids or saved.pids)


def run_delegate(args) -> int:
    from contained.classroom import delegation

    tops = delegation.delegate(args.user, _budget(args), tuple(args.move))
    budget = _budget(args)
    print(f"delegated to {args.user}: " + ", ".join(str(top) for top in tops))
    print(f"budget for all their containers: memory {budget.memory or 'unlimited'}, "
          f"cpus {budget.cpus or 'unlimited'}, pids {budget.pids or 'unlimited'}")
    return 0


def run_undelegate(args) -> int:
    from contained.classroom import delegation

    removed = delegation.undelegate(args.user)
    print("removed " + (", ".join(str(path) for path in removed) or "nothing"))
    return 0


def run_init(args) -> int:
    from contained.classroom import delegation, hub

    if args.tljh:
        return _init_tljh(args)
    directory = args.dir or "/etc/jupyterhub"
    if args.dry_run:
        print(hub.render_config(Path(directory), port=args.port, admins=args.admin))
        config = Path(directory) / hub.CONFIG_NAME
    else:
        print(f"wrote {delegation.save_budget(_budget(args))}")
        config = hub.write_config(directory, port=args.port, admins=args.admin)
        print(f"wrote {config}")
    ok = _print_checks(hub.check_machine())
    print(f"start the hub: jupyterhub -f {config}")
    return 0 if ok else 1


def _init_tljh(args) -> int:
    from contained.classroom import hub, tljh

    budget = _budget(args)
    limits = {"memory": budget.memory, "cpus": budget.cpus, "pids": budget.pids}
    if args.dry_run:
        print(tljh.render(**limits))
    else:
        print(f"wrote {tljh.write_config(args.dir or tljh.TLJH_CONFIG_DIR, **limits)}")
    ok = _print_checks(hub.check_machine(tljh=True))
    print("then: sudo tljh-config reload hub (servers started from then on get it)")
    return 0 if ok else 1


def _print_checks(checks) -> bool:
    for ok, sentence in checks:
        print(("ok    " if ok else "FIX   ") + sentence)
    return all(ok for ok, _ in checks)
