"""Namespaces: the [namespaces.NAME] tables, the rules they give each group,
token patterns and the send policies.  No sockets."""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.trial import unittest

from pushsvc.config import ConfigError, build_settings
from pushsvc.namespaces import Namespace, Namespaces, granted
from pushsvc.protocol import FORBIDDEN, Address, ProtocolError
from pushsvc.sessions import Session
from pushsvc.tap import warn_if_open_namespaces
from tests.helpers import settings

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


class TablesTests(unittest.TestCase):
    """The tables in the TOML file: read, checked, one line per mistake."""

    def config(self, text: str, **overrides):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return build_settings(path, overrides)

    def refused(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.config(text)
        return str(caught.exception)

    def test_tables_are_read(self):
        s = self.config('[namespaces.team]\njoin = "token"\npresence = false\n'
                        'events = true\nmax_members = 50\n\n'
                        '[namespaces.""]\njoin = "open"\nclient_send = "any"\n')
        self.assertEqual(s.namespaces, {"team": {"join": "token", "presence": False,
                                                 "events": True, "max_members": 50},
                                        "": {"join": "open", "client_send": "any"}})
        namespaces = Namespaces.from_settings(s)
        self.assertEqual(namespaces.of("team:7:chat"),
                         Namespace("team", "token", "joined", False, True, 50))
        self.assertEqual(namespaces.of("lobby"), Namespace("", "open", "any"))
        self.assertEqual(namespaces.of("other:1"), Namespace("other", "open", "joined"))

    def test_each_mistake_names_its_key(self):
        for text, expected in [
                ('[namespaces.team]\njion = "open"',
                 "namespaces.team.jion: unknown setting; known: join, client_send, presence, "
                 "events, max_members"),
                ('[namespaces.team]\njoin = "maybe"',
                 "namespaces.team.join: must be one of open, token, proxy, hook, server; "
                 "got 'maybe'"),
                ('[namespaces.team]\nclient_send = "all"',
                 "namespaces.team.client_send: must be one of joined, any, none, proxy; "
                 "got 'all'"),
                ('[namespaces.team]\nevents = "yes"',
                 "namespaces.team.events: must be true or false, got 'yes'"),
                ('[namespaces.""]\nmax_members = -1',
                 'namespaces."".max_members: must be a whole number >= 0 (0 = no cap), got -1'),
                ('[namespaces]\nteam = 1', "namespaces.team: must be a table ([namespaces.team])"),
                ('[namespaces."a:b"]\njoin = "open"',
                 "namespaces.a:b: a namespace name cannot hold the separator ':' "
                 "(policy.namespace_separator)"),
                ('[namespaces.team]\njoin = "proxy"',
                 "namespaces.team.join: 'proxy' needs proxy.join_url (the backend's URL)"),
                ('[namespaces.team]\nclient_send = "proxy"',
                 "namespaces.team.client_send: 'proxy' needs proxy.send_url (the backend's URL)"),
                ('[policy]\nnamespace_separator = ""',
                 "policy.namespace_separator: must be 1-8 characters that are not letters or "
                 "digits, got ''"),
                ('[proxy]\njoin_url = "ftp://x"',
                 "proxy.join_url: must be an http:// or https:// URL, got 'ftp://x'")]:
            self.assertEqual(self.refused(text), expected)

    def test_another_separator(self):
        s = self.config('[policy]\nnamespace_separator = "/"\n[namespaces.team]\n'
                        'join = "server"\n')
        namespaces = Namespaces.from_settings(s)
        self.assertEqual(namespaces.of("team/7").join, "server")
        self.assertEqual(namespaces.of("team:7").name, "")

    def test_proxy_rules_with_their_url(self):
        s = self.config('[proxy]\njoin_url = "http://127.0.0.1:9/join"\n'
                        '[namespaces.team]\njoin = "proxy"\n')
        self.assertEqual(Namespaces.from_settings(s).of("team:1").join, "proxy")


class DefaultsTests(unittest.TestCase):
    """What a namespace without a table gets depends on auth.mode."""

    def test_development_mode_is_open(self):
        namespaces = Namespaces({})
        self.assertEqual(namespaces.of("anything").join, "open")
        self.assertEqual(namespaces.open_in_secure_mode(), [])

    def test_token_modes_need_a_rule(self):
        for mode in ("token", "required"):
            namespaces = Namespaces({}, auth_mode=mode)
            self.assertEqual(namespaces.of("hr-salaries").join, "token")
            self.assertEqual(namespaces.of("team:7").join, "token")

    def test_presence_on_events_off_no_cap(self):
        ns = Namespaces({}).of("g")
        self.assertEqual((ns.presence, ns.events, ns.max_members), (True, False, 0))

    def test_open_namespaces_in_token_mode_are_warned_about(self):
        events = []
        log = Logger(observer=events.append)
        tables = {"public": {"join": "open"}, "team": {"join": "token"}}
        s = settings(auth_mode="token", jwt_secret=SECRET, namespaces=tables)
        self.assertTrue(warn_if_open_namespaces(s, log))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "warn")
        self.assertIn("SECURITY WARNING", events[0]["log_format"])
        self.assertEqual(events[0]["names"], "'public'")
        self.assertFalse(warn_if_open_namespaces(settings(namespaces=tables), log))
        self.assertEqual(len(events), 1)


class GrantedTests(unittest.TestCase):
    """A token's groups claim: exact names, or patterns with ``*``."""

    def test_names_and_patterns(self):
        claim = ("lobby", "team:7:*", "*:public", "a*b*c")
        for group in ("lobby", "team:7:chat", "team:7:", "news:public", "abc", "aXbYc"):
            self.assertTrue(granted(claim, group), group)
        for group in ("lobby2", "team:8:chat", "team:7", "news:public2", "ab", "hr-salaries"):
            self.assertFalse(granted(claim, group), group)

    def test_regex_characters_are_plain(self):
        self.assertTrue(granted(("a.b*",), "a.bc"))
        self.assertFalse(granted(("a.b*",), "aXbc"))
        self.assertFalse(granted(("[a]*",), "a"))


class SendPolicyTests(unittest.TestCase):
    """client_send per namespace; other address kinds follow policy.client_send."""

    def setUp(self):
        self.session = Session("s")
        self.session.groups = {"chat:1", "feed:1", "ask:1"}
        self.namespaces = Namespaces({"chat": {"client_send": "joined"},
                                      "feed": {"client_send": "none"},
                                      "open": {"client_send": "any"},
                                      "ask": {"client_send": "proxy"}})

    def forbidden(self, **address) -> str:
        e = self.assertRaises(ProtocolError, self.namespaces.check_send, self.session,
                              Address(**address))
        self.assertEqual(e.code, FORBIDDEN)
        return e.message

    def test_each_policy(self):
        self.assertEqual(self.namespaces.check_send(self.session, Address(group=("chat:1",))),
                         [])
        self.assertEqual(self.namespaces.check_send(self.session, Address(group=("open:9",))),
                         [])
        self.assertEqual(self.namespaces.check_send(self.session,
                                                    Address(group=("ask:1", "chat:1"))),
                         ["ask:1"])
        self.assertEqual(self.forbidden(group=("feed:1",)),
                         "clients may not send to group 'feed:1' (namespace 'feed')")
        self.assertEqual(self.forbidden(group=("chat:2",)), "not a member of group 'chat:2'")
        self.assertEqual(self.forbidden(group=("ask:2",)), "not a member of group 'ask:2'")
        self.assertEqual(self.forbidden(user=("u",)),
                         "clients may only send to groups they have joined")

    def test_a_namespace_may_open_what_the_policy_closes(self):
        namespaces = Namespaces({"open": {"client_send": "any"}}, client_send="none")
        self.assertEqual(namespaces.check_send(self.session, Address(group=("open:1",))), [])
        with self.assertRaises(ProtocolError) as caught:
            namespaces.check_send(self.session, Address(group=("chat:1",)))
        self.assertEqual(caught.exception.message, "clients may not send messages")


class DocumentedExamplesTests(unittest.TestCase):
    """The namespace tables shown in etc/pushsvc.toml and docs/security.md load."""

    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(self, text: str, **overrides):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return build_settings(path, overrides)

    def test_the_sample_files_commented_tables(self):
        with open(os.path.join(self.ROOT, "etc", "pushsvc.toml")) as f:
            lines = f.read().splitlines()
        start = lines.index("#   [namespaces.team]")
        end = lines.index('#   join = "open"', start) + 1
        text = "\n".join(line[4:] for line in lines[start:end])
        s = self.load(text)
        namespaces = Namespaces.from_settings(s)
        self.assertEqual(namespaces.of("team:1"), Namespace("team", "token", "joined"))
        self.assertEqual(namespaces.of("lobby").join, "open")

    def test_the_security_guide_example(self):
        with open(os.path.join(self.ROOT, "docs", "security.md")) as f:
            text = f.read()
        section = text[text.index("## Who may join what"):]
        start = section.index("```toml") + len("```toml")
        block = section[start:section.index("```", start)]
        s = self.load(block.replace('jwt_secret = "..."', f'jwt_secret = "{SECRET}"'))
        namespaces = Namespaces.from_settings(s)
        self.assertEqual([namespaces.of(g).join for g in ("team:7:chat", "ask:1",
                                                           "announce:x", "hr-salaries")],
                         ["token", "proxy", "server", "token"])
        self.assertEqual(namespaces.of("announce:x").client_send, "none")
