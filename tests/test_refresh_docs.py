"""tools/refresh_docs.py: tables regenerated from the commands beside them."""
import pytest

import refresh_docs

PAGE = """# Results

A command that is only shown, not generated:

```bash
python tools/compare.py --this-must-not-run
```

Prose.

```bash
python -c "print('| a | 1 |')"
```

<!-- generated: tools/refresh_docs.py -->
| a | 0 |
<!-- end generated -->

Text between.

```bash
python -c "print('| b |'); \\
  print('| c |')"
```
<!-- generated: tools/refresh_docs.py -->
| b |
| c |
<!-- end generated -->
"""


def test_refresh_runs_each_command_and_replaces_only_its_block():
    new_text, count, changed = refresh_docs.refresh(PAGE)
    assert count == 2
    assert changed == ['python -c "print(\'| a | 1 |\')"']       # the second block was up to date
    assert '| a | 1 |\n<!-- end generated -->' in new_text and '| a | 0 |' not in new_text
    assert new_text.replace('| a | 1 |\n<!--', '| a | 0 |\n<!--') == PAGE    # nothing else moved
    assert refresh_docs.refresh(new_text)[2] == []


def test_check_mode_fails_on_a_stale_page_and_leaves_it(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text(PAGE)
    with pytest.raises(SystemExit, match='out of date'):
        refresh_docs.main([str(page), '--check'])
    assert page.read_text() == PAGE
    refresh_docs.main([str(page)])
    refresh_docs.main([str(page), '--check'])                     # now up to date: no exit


def test_failing_command_and_page_without_blocks_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match='exit 3'):
        refresh_docs.refresh(PAGE.replace("print('| a | 1 |')", 'import sys; sys.exit(3)'))
    page = tmp_path / 'plain.md'
    page.write_text('# nothing generated\n')
    with pytest.raises(SystemExit, match='no generated block'):
        refresh_docs.main([str(page)])


def test_a_block_of_several_commands_gets_each_output_in_turn():
    # two lines without a continuation are two commands (joined into one, the second would be arguments of the first)
    page = PAGE.replace('''python -c "print('| a | 1 |')"''', '''python -c "print('| a | 1 |')"
python -c "print('| a | 2 |')"''')
    new_text, count, changed = refresh_docs.refresh(page)
    assert count == 2 and len(changed) == 1
    assert '| a | 1 |\n\n| a | 2 |\n<!-- end generated -->' in new_text
    assert refresh_docs.split_commands('a \\\n  b\nc\n\n') == ['a b', 'c']


def test_only_runs_the_matching_blocks_and_leaves_the_rest():
    ran = []

    def run(command):
        ran.append(command)
        return '| new |\n'
    new_text, count, changed = refresh_docs.refresh(PAGE, run=run, only="'| b |'")
    assert count == 2 and len(ran) == 1 and "'| b |'" in ran[0]   # the second block's command, not the first's
    assert '| a | 0 |' in new_text                                   # the first block kept its old table
    assert new_text.count('| new |') == 1 and changed == ran
