"""Let multi-value options be written the way the docs write them: ``--data A B C``.

Click takes one value per option occurrence, so ``--data A B`` is rewritten to
``--data A --data B`` before parsing. Options holding ``name=value`` items (``--sweep``,
``--set``, ``--where``) take following tokens only while they contain ``=``, so a positional
argument after them is never swallowed.
"""

from __future__ import annotations

# command → options that take several values until the next option
GREEDY = {"compare": {"--data", "-d", "--backbone", "-b"}}
KEYVALUE = {"--sweep", "--set", "--where"}


def expand(argv: list[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), "")
    greedy = GREEDY.get(command, set())
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token not in greedy and token not in KEYVALUE:
            continue
        values = 0
        while i < len(argv) and not argv[i].startswith("-"):
            if token in KEYVALUE and values and "=" not in argv[i]:
                break
            if values:
                out.append(token)
            out.append(argv[i])
            values += 1
            i += 1
    return out
