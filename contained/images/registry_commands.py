"""The ``contained registry`` subcommand (registered by `contained.cli`).

Taught in notebooks 00 and 04 (see `contained.images.registry`)::

    contained registry start     docker-registry serve config.yml (read-only, seeded first)
    contained registry status    is it running, and the registries.conf that reaches it
    contained registry stop      kill the server

Only argparse is used here: the registry client (http.client, email, ssl: ~25 ms) loads when
one of these commands runs, never on `contained run`.
"""


def add_registry(commands) -> None:
    """Register ``registry start|status|stop`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "registry", help="a local registry on 127.0.0.1 that serves the store's images")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start it (default port 5000, or a free one) and "
                                             "push the store's images to it")
    start.add_argument("--port", type=int, help="port on 127.0.0.1")
    start.add_argument("--no-seed", dest="seed", action="store_false",
                       help="do not push the store's images")
    start.set_defaults(func=run_registry_start)
    actions.add_parser("status", help="is it running, and how to use it").set_defaults(
        func=run_registry_status)
    actions.add_parser("stop", help="stop it").set_defaults(func=run_registry_stop)


def run_registry_start(args) -> int:
    from contained.images import registry

    print(registry.usage(registry.start(port=args.port, seed=args.seed)))
    return 0


def run_registry_status(args) -> int:
    from contained.images import registry

    state = registry.status()
    if state is None:
        print("registry not running; start it with `contained registry start`")
        return 1
    print(registry.usage(state))
    return 0


def run_registry_stop(args) -> int:
    from contained.images import registry

    state = registry.stop()
    print(f"registry on {state.address} stopped" if state else "registry was not running")
    return 0
