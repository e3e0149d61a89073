"""ukdbg/inspect/commands/help.py: `help [COMMAND]`."""

from dataclasses import dataclass, field

from . import ALIASES, TABLE, CommandError


@dataclass
class HelpView:
    commands: list = field(default_factory=list)   # [(usage, summary)]
    aliases: dict = field(default_factory=dict)

    def to_json(self):
        return {"commands": [{"usage": u, "summary": s} for u, s in self.commands]}


def run(session, args):
    name = args.strip()
    if name:
        name = ALIASES.get(name, name)
        c = TABLE.get(name)
        if c is None:
            raise CommandError(f"help: no command '{name}'")
        return HelpView([(c.usage, c.summary)],
                        {a: t for a, t in ALIASES.items() if t == name})
    return HelpView([(c.usage, c.summary) for c in TABLE.values()] +
                    [("quit", "leave (also Ctrl-D)")], dict(ALIASES))
