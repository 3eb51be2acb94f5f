"""`sai` subcommands, one module per area. Each module has `register(subparsers)`; each command
sets `handler` (an `async def handler(args, client) -> int`) and `needs_daemon`."""
