#!/usr/bin/python3
"""The flags of jwksd(8) and of `jwksd --help` (and `keys --help`,
`users --help`, the copy usage) agree, section by section.

Usage: check_man_flags.py JWKSD_BINARY MAN_PAGE [DEFAULTS_FILE]

Scopes: the server (man: OPTIONS; help: every flag of `jwksd --help` outside
the copy usage lines), copy (man: SS "jwksd copy"; help: the copy usage
lines), keys and users (man: their SS; help: `jwksd keys|users --help`).

In each scope:
- every flag on a usage line (the server: every flag of its help) has
  exactly one .TP entry in that man section, and the section defines no
  other flag;
- the flags that a command's help names in its prose (the server's store
  and schedule options) are named in its man section too, and defined in
  OPTIONS;
- the man section names no flag that its help does not.
For keys and users, the subcommand names of the usage lines and the man
page's entries are the same. DEFAULTS_FILE (debian/jwksd.default, the
packaged /etc/default/jwksd) names exactly the server's flags. Exits 1 with every difference listed.
"""
import re
import subprocess
import sys

FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


def run_help(binary, *args):
    out = subprocess.run([binary, *args, "--help"], capture_output=True,
                         text=True, timeout=30, check=False)
    if out.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} --help: exit {out.returncode}:"
                 f" {out.stderr}")
    return out.stdout


def flags(text):
    return set(FLAG.findall(text))


def help_scopes(binary):
    """{scope: (usage flags, all flags, subcommands)} from --help texts."""
    scopes = {}
    main = run_help(binary).splitlines()
    # The copy usage lines, and the copy entry of the command list (its
    # continuation lines are indented deeper), are copy's; the rest is the
    # server's.
    copy_usage, copy_text, rest, part = [], [], [], "server"
    for line in main:
        if re.match(r"\s*jwksd copy\b", line):
            part = "copy usage"
        elif re.match(r"\s*jwksd (keys|users)\b", line):
            part = "server"
        elif re.match(r"  copy  ", line):
            part = "copy text"
        elif part == "copy text" and not re.match(r"\s{4,}\S", line):
            part = "server"
        {"copy usage": copy_usage, "copy text": copy_text,
         "server": rest}[part].append(line)
    if not copy_usage:
        sys.exit("jwksd --help: no 'jwksd copy' usage line")
    server = flags("\n".join(rest))
    scopes["server"] = (server, server, set())
    copy = flags("\n".join(copy_usage))
    scopes["copy"] = (copy, copy | flags("\n".join(copy_text)), set())
    for cmd in ("keys", "users"):
        text = run_help(binary, cmd)
        usage, subs = set(), set()
        for line in text.splitlines():
            m = re.match(rf"\s*(?:usage:\s*)?jwksd {cmd} ([a-z-]+)(.*)", line)
            if m:
                subs.add(m.group(1))
                usage |= flags(m.group(2))
        if not subs:
            sys.exit(f"jwksd {cmd} --help: no usage lines")
        scopes[cmd] = (usage, flags(text), subs)
    return scopes


def plain(roff):
    """Text of a roff line: no macro name, font escapes, quotes."""
    line = re.sub(r"^\.[A-Z]+\s*", "", roff)
    line = re.sub(r"\\f[BIRP]", "", line)
    line = line.replace("\\-", "-").replace('"', "")
    return line.strip()


def man_scopes(path):
    """{scope: (defined flags in order, named flags, subcommands)}."""
    scopes = {}
    scope = None
    tag_next = False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if raw.startswith('.\\"'):
                continue
            if raw.startswith(".SH"):
                scope = "server" if plain(raw) == "OPTIONS" else None
                continue
            if raw.startswith(".SS"):
                m = re.fullmatch(r"jwksd (copy|keys|users)", plain(raw))
                scope = m.group(1) if m else None
                continue
            if raw in (".TP", ".TQ"):
                tag_next = True
                continue
            if scope is None:
                tag_next = False
                continue
            defined, named, subs = scopes.setdefault(scope, ([], set(), set()))
            text = plain(raw)
            named |= flags(text)
            if tag_next:
                tag_next = False
                words = text.split()
                if words and words[0].startswith("--"):
                    defined.append(FLAG.match(words[0]).group(0))
                elif len(words) >= 2 and words[0] == scope:
                    subs.add(words[1])
    return scopes


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    helps = help_scopes(sys.argv[1])
    mans = man_scopes(sys.argv[2])
    problems = []
    server_defined = set(mans.get("server", ([], set(), set()))[0])
    for scope, (usage, named_help, subs_help) in helps.items():
        defined, named_man, subs_man = mans.get(scope, ([], set(), set()))
        where = f"man section {scope}"
        for f in sorted({f for f in defined if defined.count(f) > 1}):
            problems.append(f"{where}: {f} has {defined.count(f)} entries")
        for f in sorted(usage - set(defined)):
            problems.append(f"{where}: no entry for {f} (in --help)")
        for f in sorted(set(defined) - usage):
            problems.append(f"{where}: entry for {f}, not in --help")
        for f in sorted(named_help - named_man):
            problems.append(f"{where}: does not name {f} (its --help does)")
        for f in sorted(named_man - named_help):
            problems.append(f"{where}: names {f}, its --help does not")
        for f in sorted(named_help - usage - server_defined):
            problems.append(f"{where}: {f} is named, defined nowhere")
        if subs_help != subs_man:
            problems.append(f"{where}: subcommands {sorted(subs_man)},"
                            f" --help has {sorted(subs_help)}")
    if len(sys.argv) == 4:
        with open(sys.argv[3], encoding="utf-8") as f:
            named = flags(f.read())
        server = helps["server"][1]
        for f in sorted(server - named):
            problems.append(f"{sys.argv[3]}: does not name {f}")
        for f in sorted(named - server):
            problems.append(f"{sys.argv[3]}: names {f}, not a server flag")
    for p in problems:
        print(p)
    total = sum(len(set(m[0])) for m in mans.values())
    print(f"{total} flag entries in {len(mans)} sections;"
          f" {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
