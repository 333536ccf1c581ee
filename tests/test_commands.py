"""Server-side commands: make_command checks and merge semantics."""

from twisted.trial import unittest

from pushsvc.broker.interface import Command
from pushsvc.commands import COMMANDS, make_command, merge
from pushsvc.protocol import BAD_REQUEST, ProtocolError


class MakeCommandTests(unittest.TestCase):
    def refused(self, command, body):
        e = self.assertRaises(ProtocolError, make_command, command, body)
        self.assertEqual(e.code, BAD_REQUEST)
        return e.message

    def test_targeted_commands(self):
        for command, key in (("join", "group"), ("leave", "group"),
                             ("tag", "tag"), ("untag", "tag")):
            self.assertEqual(make_command(command, {key: "x", "user": "u"}),
                             Command(command, {key: "x", "user": "u"}))
            self.assertEqual(make_command(command, {key: "x", "session": "n.0.i.1"}),
                             Command(command, {key: "x", "session": "n.0.i.1"}))
            self.assertEqual(self.refused(command, {key: "x"}),
                             "give exactly one of 'user' or 'session'")
            self.assertEqual(self.refused(command, {key: "x", "user": "u", "session": "s"}),
                             "give exactly one of 'user' or 'session'")
            self.assertEqual(self.refused(command, {"user": "u"}),
                             f"'{key}' must be a non-empty string")
            self.assertEqual(self.refused(command, {key: "x", "user": ""}),
                             "'user' must be a non-empty string")
            self.assertEqual(self.refused(command, {key: "x", "session": 5}),
                             "'session' must be a non-empty string")

    def test_untargeted_commands(self):
        self.assertEqual(make_command("destroy", {"group": "g"}),
                         Command("destroy", {"group": "g"}))
        self.assertEqual(make_command("group", {"group": "g"}), Command("group", {"group": "g"}))
        self.assertEqual(make_command("user", {"user": "u"}), Command("user", {"user": "u"}))
        self.assertEqual(make_command("groups", {}), Command("groups", {}))
        self.assertEqual(make_command("stats", {}), Command("stats", {}))
        self.assertEqual(self.refused("destroy", {}), "'group' must be a non-empty string")
        self.assertEqual(self.refused("group", {"group": ["g"]}),
                         "'group' must be a non-empty string")
        self.assertEqual(self.refused("user", {"user": None}),
                         "'user' must be a non-empty string")
        self.assertEqual(self.refused("destroy", {"group": "g" * 201}),
                         "'group' is longer than 200 characters")

    def test_body_must_be_an_object(self):
        for command in COMMANDS:
            for body in (None, [], "x", 3):
                self.assertEqual(self.refused(command, body), "the body must be a JSON object")

    def test_unknown_command(self):
        self.assertEqual(self.refused("explode", {}), "unknown command 'explode'")
        self.assertEqual(self.refused("perform", {}), "unknown command 'perform'")


class MergeTests(unittest.TestCase):
    def test_empty(self):
        self.assertEqual(merge([]), {})
        self.assertEqual(merge([{}, {}]), {})

    def test_single_result_is_copied(self):
        one = {"members": [1], "n": {"a": 1}}
        out = merge([one])
        self.assertEqual(out, one)
        out["members"].append(2)
        out["n"]["a"] = 9
        self.assertEqual(one, {"members": [1], "n": {"a": 1}})

    def test_numbers_add(self):
        self.assertEqual(merge([{"sessions": 2, "load": 0.5}, {"sessions": 3, "load": 0.25},
                                {"sessions": 0}]),
                         {"sessions": 5, "load": 0.75})

    def test_lists_concatenate(self):
        a, b = {"members": [{"session": "a"}]}, {"members": [{"session": "b"}, {"session": "c"}]}
        self.assertEqual(merge([a, b, {"members": []}]),
                         {"members": [{"session": "a"}, {"session": "b"}, {"session": "c"}]})
        self.assertEqual(a, {"members": [{"session": "a"}]})

    def test_dicts_merge_recursively(self):
        self.assertEqual(
            merge([{"groups": {"g1": 2, "g2": 1}, "x": {"deep": {"n": 1, "l": [1]}}},
                   {"groups": {"g1": 3, "g3": 4}, "x": {"deep": {"n": 1, "l": [2]}}}]),
            {"groups": {"g1": 5, "g2": 1, "g3": 4}, "x": {"deep": {"n": 2, "l": [1, 2]}}})

    def test_bools_or(self):
        self.assertEqual(merge([{"ok": False}, {"ok": True}, {"ok": False}]), {"ok": True})
        self.assertEqual(merge([{"ok": False}, {"ok": False}]), {"ok": False})
        self.assertIs(merge([{"ok": True}, {"ok": True}])["ok"], True)

    def test_keys_from_every_result(self):
        self.assertEqual(merge([{"a": 1}, {"b": [1]}, {"c": "s"}]),
                         {"a": 1, "b": [1], "c": "s"})
