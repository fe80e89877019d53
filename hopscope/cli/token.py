"""``hopscope token add|list|remove``: the API tokens of a token file (``hopscope serve --token-file``).

``add`` prints the new token once, on standard output; the file keeps only its salted SHA-256
(``hopscope.api.tokens``), so a lost token is removed and replaced, never recovered. A running server
reads the file when it starts: restart it to apply a change."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hopscope.api.tokens import SCOPES

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="make a token, add its hash to the file, print the token once")
    remove = actions.add_parser("remove", help="remove a token from the file")
    listing = actions.add_parser("list", help="the tokens of the file: name, scopes, tenant (never a token)")
    for action in (add, remove, listing):
        action.add_argument("--token-file", required=True, metavar="FILE", help="the token file (created by add)")
    for action in (add, remove):
        action.add_argument("--name", required=True, help="the token's name, unique in the file (in logs)")
    add.add_argument("--scope", action="append", required=True, choices=SCOPES,
                     help="a scope the token holds (repeatable; admin holds every scope)")
    add.add_argument("--tenant", help="the tenant whose store the token reads (serve --tenant-store TENANT=URL); "
                     "default: the server's --store")


def run(args: argparse.Namespace) -> int:
    from hopscope.api.tokens import add_token, load_tokens, remove_token

    if args.action == "add":
        token = add_token(args.token_file, args.name, args.scope, args.tenant)
        print(token)
        print(f"hopscope: token {args.name!r} added to {args.token_file}; it is shown only now", file=sys.stderr)
    elif args.action == "remove":
        remove_token(args.token_file, args.name)
        print(f"hopscope: token {args.name!r} removed from {args.token_file}", file=sys.stderr)
    else:
        for entry in load_tokens(args.token_file):
            print(f"{entry.name}\t{','.join(sorted(entry.scopes))}\t{entry.tenant or '-'}")
    return 0
