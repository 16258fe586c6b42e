#!/usr/bin/env python3
"""Check tests/data/keys-corpus.txt against a live Redis server.

What it does
  * Reads keys-corpus.txt (next to this script, or --corpus PATH). Each
    non-comment line is one command written the way Redis MONITOR prints it
    (sdscatrepr escaping: every argument in double quotes, \\\\ \\" \\n \\r
    \\t \\a \\b and \\xHH for any other byte outside 0x20-0x7e).
  * Decodes every line to raw argument bytes, and checks that re-escaping
    them gives back exactly the same text (so every line is in the canonical
    form MONITOR would print).
  * Sends `COMMAND GETKEYSANDFLAGS <args...>` for every line over a raw
    socket (RESP2, binary-safe) and classifies the answer:
      keys     - a non-empty list of [key, [flags...]]
      keyless  - an empty list, or one of the errors a keyless command gets:
                 "wrong number of arguments for 'command|getkeys...'",
                 "The command has no key arguments",
                 "Invalid arguments specified for command"
                 (for these errors the script also checks, with the arity
                 from COMMAND, that the command exists and has a valid
                 number of arguments, since the server does not)
      BAD      - anything else (unknown command, wrong arity, ...)
  * Reads `COMMAND` from the same server, collects every command and
    subcommand with the `write` flag, and reports which of them no corpus
    line exercises (a line covers "cmd|sub" when arg0 is a container command
    and arg1 names one of its subcommands, case-insensitively).
  * Exits 0 only if every line is well-formed, no line is BAD and write
    coverage is 100%.

How to run
  Start a throwaway server (any 7.0.x; the corpus was made against 7.0.15):
      redis-server --port 7391 --save '' --appendonly no &
  then
      python3 tests/data/check-keys-corpus.py 7391
  Options: --host HOST (default 127.0.0.1), --corpus PATH,
           -v / --verbose  print every line with the keys+flags the server
                           returned (handy for writing expected values).
  Only the Python standard library is used. The script sends nothing but
  COMMAND and COMMAND GETKEYSANDFLAGS, so it does not change the server.
"""

import argparse
import os
import re
import socket
import sys

# ---------------------------------------------------------------- escaping

_SIMPLE_ESC = {'\\': b'\\', '"': b'"', 'n': b'\n', 'r': b'\r',
               't': b'\t', 'a': b'\x07', 'b': b'\x08'}


class LineError(ValueError):
    pass


def parse_monitor_args(line):
    """Decode `"a" "b\\x00" ...` (MONITOR / sdscatrepr form) to a list of bytes."""
    args = []
    i, n = 0, len(line)
    while i < n:
        if line[i] != '"':
            raise LineError('expected \'"\' at column %d' % (i + 1))
        i += 1
        buf = bytearray()
        while True:
            if i >= n:
                raise LineError('unterminated argument')
            ch = line[i]
            if ch == '"':
                i += 1
                break
            if ch == '\\':
                if i + 1 >= n:
                    raise LineError('dangling backslash')
                e = line[i + 1]
                if e in _SIMPLE_ESC:
                    buf += _SIMPLE_ESC[e]
                    i += 2
                elif e == 'x':
                    hh = line[i + 2:i + 4]
                    if not re.fullmatch(r'[0-9a-fA-F]{2}', hh):
                        raise LineError('bad \\x escape at column %d' % (i + 1))
                    buf.append(int(hh, 16))
                    i += 4
                else:
                    raise LineError('unknown escape \\%s at column %d' % (e, i + 1))
                continue
            o = ord(ch)
            if o < 0x20 or o > 0x7e:
                raise LineError('raw non-printable character at column %d' % (i + 1))
            buf.append(o)
            i += 1
        args.append(bytes(buf))
        if i < n:
            if line[i] != ' ' or i + 1 >= n:
                raise LineError('arguments must be separated by one space (column %d)' % (i + 1))
            i += 1
    if not args:
        raise LineError('no arguments')
    return args


def repr_arg(b):
    """sdscatrepr() of one argument, exactly as MONITOR prints it."""
    out = ['"']
    for x in b:
        if x == 0x5c:
            out.append('\\\\')
        elif x == 0x22:
            out.append('\\"')
        elif x == 0x0a:
            out.append('\\n')
        elif x == 0x0d:
            out.append('\\r')
        elif x == 0x09:
            out.append('\\t')
        elif x == 0x07:
            out.append('\\a')
        elif x == 0x08:
            out.append('\\b')
        elif 0x20 <= x <= 0x7e:
            out.append(chr(x))
        else:
            out.append('\\x%02x' % x)
    out.append('"')
    return ''.join(out)


def repr_args(args):
    return ' '.join(repr_arg(a) for a in args)

# -------------------------------------------------------------------- RESP


class RespError(Exception):
    pass


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.rf = self.sock.makefile('rb')

    def call(self, *args):
        parts = [b'*%d\r\n' % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            parts.append(b'$%d\r\n' % len(a))
            parts.append(a)
            parts.append(b'\r\n')
        self.sock.sendall(b''.join(parts))
        return self._read()

    def _read(self):
        line = self.rf.readline()
        if not line.endswith(b'\r\n'):
            raise ConnectionError('connection closed')
        kind, rest = line[:1], line[1:-2]
        if kind == b'+':
            return rest
        if kind == b'-':
            return RespError(rest.decode('utf-8', 'replace'))
        if kind == b':':
            return int(rest)
        if kind == b'$':
            n = int(rest)
            if n < 0:
                return None
            data = self.rf.read(n + 2)
            return data[:-2]
        if kind == b'*':
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError('unexpected reply type %r' % line)

# ---------------------------------------------------------------- checking

KEYLESS_ERRORS = [
    re.compile(r"^ERR wrong number of arguments for 'command\|getkeys(andflags)?' command$"),
    re.compile(r"^ERR The command has no key arguments$"),
    re.compile(r"^ERR Invalid arguments specified for command$"),
]


def command_table(conn):
    """Return ({name: flags}, {name: arity}, {container: set(subnames)})."""
    reply = conn.call('COMMAND')
    if isinstance(reply, RespError):
        raise SystemExit('COMMAND failed: %s' % reply)
    flags, arity, containers = {}, {}, {}

    def walk(entry):
        name = entry[0].decode().lower()
        flags[name] = {f.decode().lower() for f in entry[2]}
        arity[name] = entry[1]
        subs = entry[9] if len(entry) > 9 else []
        if subs:
            containers[name] = set()
        for sub in subs:
            containers[name].add(sub[0].decode().lower())
            walk(sub)
    for entry in reply:
        walk(entry)
    return flags, arity, containers


def arity_ok(arity, nargs):
    return nargs == arity if arity > 0 else nargs >= -arity


def command_name(args, containers):
    name = args[0].decode('latin-1').lower()
    if name in containers and len(args) > 1:
        sub = name + '|' + args[1].decode('latin-1').lower()
        if sub in containers[name]:
            return sub
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('port', type=int)
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--corpus', default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'keys-corpus.txt'))
    ap.add_argument('-v', '--verbose', action='store_true')
    opts = ap.parse_args()

    conn = Conn(opts.host, opts.port)
    flags, arity, containers = command_table(conn)
    write_cmds = {n for n, f in flags.items() if 'write' in f}

    n_lines = n_keys = n_keyless = 0
    bad = []
    covered = set()
    keyless_by_reason = {}
    with open(opts.corpus, 'r', encoding='ascii', newline='') as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw[:-1] if raw.endswith('\n') else raw
            if line.endswith('\r'):
                bad.append((lineno, line, 'line ends with CR (CRLF file?)'))
                continue
            if not line.strip() or line.startswith('#'):
                continue
            n_lines += 1
            try:
                args = parse_monitor_args(line)
            except LineError as e:
                bad.append((lineno, line, 'malformed: %s' % e))
                continue
            if repr_args(args) != line:
                bad.append((lineno, line, 'not canonical MONITOR form; expected: ' + repr_args(args)))
                continue
            name = command_name(args, containers)
            covered.add(name)
            reply = conn.call('COMMAND', 'GETKEYSANDFLAGS', *args)
            if isinstance(reply, RespError):
                msg = str(reply)
                if any(p.match(msg) for p in KEYLESS_ERRORS):
                    # These errors are given before (or without) the arity
                    # check, so check that the server would run the line.
                    if name not in flags:
                        bad.append((lineno, line, 'unknown command %r (server said: %s)' % (name, msg)))
                        continue
                    if not arity_ok(arity[name], len(args)):
                        bad.append((lineno, line, 'wrong number of arguments for %s (arity %d); '
                                    'the server would reject it before running it (server said: %s)'
                                    % (name, arity[name], msg)))
                        continue
                    n_keyless += 1
                    keyless_by_reason[msg] = keyless_by_reason.get(msg, 0) + 1
                    if opts.verbose:
                        print('%5d keyless  %s\n        -> %s' % (lineno, line, msg))
                else:
                    bad.append((lineno, line, 'server said: %s' % msg))
                continue
            if not isinstance(reply, list):
                bad.append((lineno, line, 'unexpected reply %r' % (reply,)))
                continue
            if not reply:
                n_keyless += 1
                keyless_by_reason['(empty list)'] = keyless_by_reason.get('(empty list)', 0) + 1
                if opts.verbose:
                    print('%5d keyless  %s\n        -> []' % (lineno, line))
                continue
            n_keys += 1
            if opts.verbose:
                shown = ', '.join('%s %s' % (repr_arg(k),
                                             '|'.join(f.decode() for f in fl) or '(no-flags)')
                                  for k, fl in reply)
                print('%5d keys     %s\n        -> %s' % (lineno, line, shown))

    unknown = sorted(n for n in covered if n not in flags)
    missing = sorted(write_cmds - covered)
    print('corpus: %s' % opts.corpus)
    print('command lines: %d  with keys: %d  keyless: %d  bad: %d'
          % (n_lines, n_keys, n_keyless, len(bad)))
    for reason, cnt in sorted(keyless_by_reason.items()):
        print('  keyless %4d  %s' % (cnt, reason))
    pct = 100.0 * (len(write_cmds) - len(missing)) / max(1, len(write_cmds))
    print('write-command coverage: %d/%d (%.1f%%)'
          % (len(write_cmds) - len(missing), len(write_cmds), pct))
    if missing:
        print('  missing: ' + ' '.join(missing))
    if unknown:
        print('  names not in COMMAND (unknown to this server): ' + ' '.join(unknown))
    for lineno, line, why in bad:
        print('BAD line %d: %s\n    %s' % (lineno, line, why))
    ok = not bad and not missing
    print('OK' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
