"""Writes torchdistill YAML configs from plain Python data (dicts, lists, scalars) with ruamel.yaml.

A config generator builds the config as data and calls :func:`dump_config`; nothing is glued from strings. Besides
dicts (written in insertion order), lists (flow style ``[a, b]`` when every item is a scalar, else block style),
strings (single-quoted values, plain keys), numbers (floats as decimals, ``0.00002``: PyYAML, which torchdistill
reads with, takes ``2e-05`` for a string), booleans (``True``/``False``) and ``None``, the data may hold:

- ``anchor(name, value)``: ``&name value``. Anchored scalars are written ``&name value`` on the key's line, the form
  that tools and tests rewrite with the regex ``(&name )(\\S+)`` (e.g. ``&num_epochs 30``, ``&root_dir '...'``,
  ``&num_train_samples null``). An anchor may also be a dict key (``&train fashion_mnist/train: ...``).
- ``alias(name)``: ``*name``, the value anchored earlier in the same document under ``name``.
- ``tagged(tag, value)``: ``!tag value``, e.g. ``tagged('!join', [alias('ckpt_root'), '/ce/x.pt'])``. The functions
  ``import_call(key, kwargs)``, ``import_get(key)`` and ``join(*parts)`` build torchdistill's ``!import_call``,
  ``!import_get`` and ``!join`` nodes.
- ``note(value, text)``: ``key: value  # text`` (for a dict value; after ``key:`` when the value is a block; not on
  an alias), and ``note(value, text, above=True)``: ``text`` as comment lines above ``key:``, wrapped to the page
  width.

``dump_config(data, header_lines)`` returns the YAML text: ``header_lines`` as ``# `` comments on top, then the
top-level dict with a blank line between its sections. A duplicate anchor name, an alias of a name not anchored
before it, a note on an alias, or an object appearing twice (which YAML would write as an unnamed ``&id001``
alias) raises ValueError.

Example::

    dump_config({'settings': {'ckpt_root': anchor('ckpt_root', './ckpt'),
                              'num_epochs': note(anchor('num_epochs', 30), 'all methods share it')},
                 'train': {'num_epochs': alias('num_epochs'), 'dst_ckpt': join(alias('ckpt_root'), '/kd.pt')}},
                ['what this config is'])

gives::

    # what this config is
    settings:
      ckpt_root: &ckpt_root './ckpt'
      num_epochs: &num_epochs 30            # all methods share it

    train:
      num_epochs: *num_epochs
      dst_ckpt: !join [*ckpt_root, '/kd.pt']
"""
import decimal
import io
import textwrap
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.anchor import Anchor as _RuamelAnchor
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.emitter import Emitter
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import SingleQuotedScalarString

WIDTH = 118            # page width of wrapped comments
COMMENT_COLUMN = 40    # end-of-line comments start here (or two spaces after a longer line)


@dataclass(eq=False)
class Anchor:
    name: str
    value: Any


@dataclass(frozen=True)
class Alias:
    name: str


@dataclass(frozen=True)
class Tagged:
    tag: str
    value: Any


@dataclass(frozen=True)
class Note:
    value: Any
    text: str
    above: bool = False


def anchor(name, value):
    """``&name value``; refer to it later with ``alias(name)``."""
    return Anchor(name, value)


def alias(name):
    """``*name``: the value anchored earlier under ``name``."""
    return Alias(name)


def tagged(tag, value):
    """``!tag value`` (``tag`` starts with ``!``)."""
    return Tagged(tag, value)


def note(value, text, above=False):
    """``value`` with the comment ``text`` at the end of its line, or above its key if ``above``."""
    return Note(value, text, above)


def import_call(key, kwargs=None):
    """torchdistill's ``!import_call {key: key, init: {kwargs: kwargs}}`` (``init:`` empty without kwargs)."""
    return tagged('!import_call', {'key': key, 'init': None if kwargs is None else {'kwargs': kwargs}})


def import_get(key):
    """torchdistill's ``!import_get {key: key}``."""
    return tagged('!import_get', {'key': key})


def join(*parts):
    """torchdistill's ``!join [parts...]``: the parts' string concatenation."""
    return tagged('!join', list(parts))


class _Representer(RoundTripRepresenter):
    """ruamel's round-trip representer plus named anchors, tags and YAML-1.1-safe decimals."""

    def represent_anchor(self, data):
        node = self.represent_data(data.value)
        if data.value is None:  # ruamel writes None as nothing, which leaves `&name` without a value to rewrite
            node = self.represent_scalar('tag:yaml.org,2002:null', 'null')
        node.anchor = _RuamelAnchor()
        node.anchor.value, node.anchor.always_dump = data.name, True
        self.represented_objects[id(data)] = node   # the next occurrence of this object becomes *name
        return node

    def represent_tagged(self, data):
        node = self.represent_data(data.value)
        node.tag = data.tag
        return node

    def represent_decimal(self, data):
        """'0.00002', not '2e-05': PyYAML (YAML 1.1, what torchdistill reads with) takes '2e-05' for a string."""
        text = format(decimal.Decimal(repr(data)), 'f')
        return self.represent_scalar('tag:yaml.org,2002:float', text if '.' in text else text + '.0')


_Representer.add_representer(Anchor, _Representer.represent_anchor)
_Representer.add_representer(Tagged, _Representer.represent_tagged)
_Representer.add_representer(float, _Representer.represent_decimal)


class _Emitter(Emitter):
    """Two spaces, not one, before an end-of-line comment on a line longer than ``COMMENT_COLUMN``."""

    def write_comment(self, comment, pre=False):
        if not pre and self.column and comment.value.startswith('#'):
            comment.start_mark.column = max(comment.start_mark.column, self.column + 2)
        super().write_comment(comment, pre)


def _is_scalar(value):
    while isinstance(value, Anchor):
        value = value.value
    return value is None or isinstance(value, (str, int, float, bool, Alias))


class _Converter:
    """Turns the data into ruamel's commented containers, resolving aliases to the anchored objects."""

    def __init__(self):
        self.anchors = {}
        self.seen = set()

    def __call__(self, value, column, is_key=False):
        if isinstance(value, Alias):
            if value.name not in self.anchors:
                raise ValueError(f'alias *{value.name}: no anchor &{value.name} before it')
            return self.anchors[value.name]
        if isinstance(value, (dict, list, tuple, Anchor, Tagged)):
            if id(value) in self.seen:
                raise ValueError(f'{value!r:.80} appears twice: use anchor() and alias() to repeat a value')
            self.seen.add(id(value))
        if isinstance(value, Anchor):
            if value.name in self.anchors:
                raise ValueError(f'anchor &{value.name} defined twice')
            converted = Anchor(value.name, self(value.value, column, is_key))
            self.anchors[value.name] = converted
            return converted
        if isinstance(value, Tagged):
            return Tagged(value.tag, self(value.value, column))
        if isinstance(value, Note):
            raise ValueError(f'note({value.text!r}) outside a dict value')
        if isinstance(value, dict):
            return self.mapping(value, column)
        if isinstance(value, (list, tuple)):
            seq = CommentedSeq(self(item, column + 2) for item in value)
            if all(_is_scalar(item) for item in value):
                seq.fa.set_flow_style()
            return seq
        if isinstance(value, str) and not is_key:
            return SingleQuotedScalarString(value)
        return value

    def mapping(self, data, column, blank_lines=False):
        """A dict as a CommentedMap; ``blank_lines``: a blank line before every key but the first."""
        result = CommentedMap()
        for index, (key, value) in enumerate(data.items()):
            notes = []
            while isinstance(value, Note):
                notes.append(value)
                value = value.value
            key = self(key, column, is_key=True)
            result[key] = self(value, column + 2)
            above = [line for item in notes if item.above
                     for line in textwrap.wrap(item.text, WIDTH - column - 2, break_on_hyphens=False)]
            if above or (blank_lines and index):
                before = '\n'.join(above)
                result.yaml_set_comment_before_after_key(key, before='\n' + before if blank_lines and index else before,
                                                         indent=column)
            for item in notes:
                if item.above:
                    continue
                if isinstance(value, Alias):  # ruamel keeps end-of-line comments on the (shared) anchored node
                    raise ValueError(f'note({item.text!r}) on *{value.name}: an alias takes no end-of-line comment')
                result.yaml_add_eol_comment(f'# {item.text}', key, column=COMMENT_COLUMN)
        return result


def dump_config(data, header_lines=()):
    """The YAML text of the dict ``data``: ``header_lines`` as comments on top, blank lines between sections."""
    if not isinstance(data, dict):
        raise ValueError(f'a config is a dict, not {type(data).__name__}')
    document = _Converter().mapping(data, 0, blank_lines=True)
    if header_lines:
        document.yaml_set_start_comment('\n'.join(header_lines))
    yaml = YAML()
    yaml.Representer, yaml.Emitter = _Representer, _Emitter
    yaml.boolean_representation = ['False', 'True']
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096   # never fold a long string value onto a second line
    stream = io.StringIO()
    yaml.dump(document, stream)
    return stream.getvalue()
