"""One rule for user errors: any EmoprobeError is ``error:`` + exit 2; anything else is a bug."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from probe.cli import main
from probe.errors import EmoprobeError


class HelloError(EmoprobeError, ValueError):
    """A plugin's own user error: no tag on the handler needed."""


def register(sub):
    sub.add_parser("hello").add_argument("--fail", choices=["user", "bug"])

    def hello(args):
        if args.fail == "user":
            raise HelloError("--fail user: choose another value")
        if args.fail == "bug":
            raise ValueError("a bug in the plugin")
        print("hello")
        return 0

    return {"hello": hello}


@pytest.fixture
def plugin(monkeypatch):
    class EP:
        name, value = "hello", "tests:register"

        def load(self):
            return register

    real = md.entry_points
    monkeypatch.setattr(md, "entry_points",
                        lambda **kw: [EP()] if kw.get("group") == "emoprobe.commands" else real(**kw))


def test_an_emoprobe_error_is_a_user_error(plugin, capsys):
    assert main(["hello"]) == 0 and capsys.readouterr().out == "hello\n"
    assert main(["hello", "--fail", "user"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --fail user: choose another value\n"


def test_other_errors_keep_their_traceback(plugin):
    with pytest.raises(ValueError, match="a bug in the plugin"):
        main(["hello", "--fail", "bug"])


def test_core_errors_without_tags_are_user_errors(capsys):
    """A core error raised before any model loads (a bad dataset name) goes the same way."""
    assert main(["cache", "--dataset", "no-such-dataset", "--limit", "4"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
