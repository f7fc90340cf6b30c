"""`bench weights list|show`: the catalogue of initializations."""

from __future__ import annotations

HELP = "the catalogue of initializations"


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("weights", help=HELP)
    wsub = p.add_subparsers(dest="weights_cmd", required=True, metavar="list|show")
    wsub.add_parser("list", help="table of known initializations")
    ws = wsub.add_parser("show", help="everything known about one initialization")
    ws.add_argument("name")
    p.set_defaults(func=main)


def main(args) -> int:
    import weights_registry as wr

    print(wr.describe(args.name) if args.weights_cmd == "show" else wr.table())
    return 0
