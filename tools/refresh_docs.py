"""Regenerates the tables of a Markdown page from the commands written beside them, so no number is typed by hand.

    python tools/refresh_docs.py docs/RESULTS.md            # rewrite every generated block
    python tools/refresh_docs.py docs/RESULTS.md --check    # exit 1 if a block differs from its command's output

A generated block is a fenced ``bash`` block holding one command or several (one per line; a line ending in ``\\``
continues on the next), followed (after an optional blank line) by

    <!-- generated: tools/refresh_docs.py -->
    ...the command's standard output, verbatim...
    <!-- end generated -->

Each command runs from the repository root through the shell; their stdouts, a blank line between two, replace what
is between the markers. The commands are meant to build tables from committed records (``tools/compare.py ...
-table_only``, ``tools/analyze.py zscore_bound``), which take seconds and train nothing.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = '<!-- generated: tools/refresh_docs.py -->', '<!-- end generated -->'
# the command may not contain a fence, so a plain ```bash block earlier on the page is never taken for one
BLOCK = re.compile(r'```bash\n(?P<command>(?:(?!```).)*?)\n```\n\n?' + re.escape(BEGIN) + r'\n(?P<body>.*?)'
                   + re.escape(END), re.DOTALL)


def interpreter_path():
    """A folder whose ``python`` and ``python3`` run this interpreter (``sys.executable``): the commands' ``python``
    is the one running this script (a venv's, even when the venv is not activated), not the first one on PATH.
    Shell scripts, not links: a link to a venv's interpreter outside the venv would not find its packages."""
    folder = os.path.join(tempfile.gettempdir(), f'refresh_docs_python_{os.getpid()}')
    os.makedirs(folder, exist_ok=True)
    for name in ('python', 'python3'):
        path = os.path.join(folder, name)
        with open(path, 'w') as f:
            f.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        os.chmod(path, 0o755)
    return folder


def command_output(command):
    """The command's stdout (the repository root as working directory, ``python`` this interpreter); exits naming
    it when it fails."""
    env = dict(os.environ, PATH=interpreter_path() + os.pathsep + os.environ.get('PATH', ''))
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f'refresh_docs: `{command}` failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}')
    return done.stdout.strip() + '\n'


def split_commands(block):
    """The commands of a block: one per line, a line ending in a backslash continuing on the next."""
    commands, current = [], []
    for line in block.splitlines():
        current.append(line.strip().rstrip('\\').strip())
        if not line.rstrip().endswith('\\'):
            commands.append(' '.join(part for part in current if part))
            current = []
    if current:
        commands.append(' '.join(part for part in current if part))
    return [command for command in commands if command]


def refresh(text, run=command_output, only=None):
    """(new text, number of blocks, commands whose output differed from the page); with ``only``, just the blocks
    whose commands contain that text run, and the others stay as they are."""
    changed = []

    def replace(match):
        commands = split_commands(match['command'])
        command = '; '.join(commands)
        if only is not None and only not in command:
            return match.group(0)
        output = '\n'.join(run(one) for one in commands)
        if output != match['body']:
            changed.append(command)
        return match.group(0)[:match.start('body') - match.start()] + output + END

    new_text, count = BLOCK.subn(replace, text)
    return new_text, count, changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('pages', nargs='+')
    parser.add_argument('--check', action='store_true', help='change nothing; exit 1 if a block is out of date')
    parser.add_argument('--only', metavar='TEXT',
                        help='refresh only the blocks whose commands contain TEXT (e.g. a run label or a records dir)')
    args = parser.parse_args(argv)
    stale = []
    for page in args.pages:
        with open(page) as f:
            text = f.read()
        new_text, count, changed = refresh(text, only=args.only)
        if count == 0:
            sys.exit(f'refresh_docs: {page} has no generated block ({BEGIN} after a ```bash command block)')
        stale += [f'{page}: {command}' for command in changed]
        if not args.check and new_text != text:
            with open(page, 'w') as f:
                f.write(new_text)
        print(f'{page}: {count} blocks, {len(changed)} {"stale" if args.check else "rewritten"}')
    if args.check and stale:
        sys.exit('out of date:\n' + '\n'.join(stale))


if __name__ == '__main__':
    main()
