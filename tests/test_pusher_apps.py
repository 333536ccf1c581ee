"""The [[pusher.apps]] tables (pushsvc.pusher.apps): checks, defaults, one
error per mistake naming its key, lookups, and the channel <-> group mapping.
No sockets."""

from __future__ import annotations

import tomllib

from twisted.trial import unittest

from pushsvc.namespaces import Namespaces
from pushsvc.pusher.apps import DEFAULTS, Apps, AppTableError, PusherApp, Webhook, check_apps

TOML = """
[[pusher.apps]]
id = "1001"
key = "app-key"
secret = "app-secret"

[[pusher.apps]]
id = "shop"
key = "shop-key"
secret = "shop-secret"
client_events = true
user_authentication = true
max_connections = 500
max_event_bytes = 2048
max_channel_name = 64
max_client_events_per_second = 20
max_backend_events_per_second = 500
allowed_origins = ["https://Shop.Example:443", "*.example.com", "http://localhost:3000"]
webhooks = [{url = "https://backend.example/pusher", events = ["channel_occupied",
                                                               "member_added"]},
            {url = "http://other.example/hook", events = ["client_event"]}]
"""


def one(**table):
    """One app table with the required keys and ``table``."""
    return [{"id": "1", "key": "k", "secret": "s", **table}]


class CheckAppsTests(unittest.TestCase):

    def refused(self, raw, separator=":") -> AppTableError:
        with self.assertRaises(AppTableError) as caught:
            check_apps(raw, separator)
        return caught.exception

    def test_toml_tables_with_defaults(self):
        tables = check_apps(tomllib.loads(TOML)["pusher"]["apps"])
        self.assertEqual(tables[0], {"id": "1001", "key": "app-key", "secret": "app-secret",
                                     "enabled": True, "client_events": False,
                                     "user_authentication": False, "max_connections": 0,
                                     "webhooks": [], "max_event_bytes": 10240,
                                     "max_channel_name": 200,
                                     "max_client_events_per_second": 10,
                                     "max_backend_events_per_second": 0,
                                     "allowed_origins": ["*"]})
        self.assertEqual(tables[1]["webhooks"][0],
                         {"url": "https://backend.example/pusher",
                          "events": ["channel_occupied", "member_added"]})
        self.assertEqual(tables[1]["max_channel_name"], 64)
        self.assertEqual((tables[1]["max_client_events_per_second"],
                          tables[1]["max_backend_events_per_second"]), (20, 500))
        self.assertEqual(tables[1]["allowed_origins"],
                         ["https://shop.example", "*.example.com", "http://localhost:3000"])
        self.assertEqual(set(tables[1]), set(DEFAULTS))

    def test_none_and_empty(self):
        self.assertEqual(check_apps(None), [])
        self.assertEqual(check_apps([]), [])

    def test_not_a_list(self):
        e = self.refused({"id": "1"})
        self.assertEqual(e.key, "pusher.apps")
        self.assertIn("[[pusher.apps]]", str(e))
        self.assertEqual(self.refused(["x"]).key, "pusher.apps[0]")

    def test_required(self):
        for key in ("id", "key", "secret"):
            raw = one()
            del raw[0][key]
            e = self.refused(raw)
            self.assertEqual(e.key, f"pusher.apps[0].{key}")
            self.assertEqual(str(e), f"pusher.apps[0].{key}: is required")

    def test_empty_or_wrong_strings(self):
        self.assertEqual(self.refused(one(secret="")).key, "pusher.apps[0].secret")
        self.assertEqual(self.refused(one(secret=5)).key, "pusher.apps[0].secret")
        self.assertEqual(self.refused(one(id="")).key, "pusher.apps[0].id")
        self.assertEqual(self.refused(one(id="a/b")).key, "pusher.apps[0].id")
        self.assertEqual(self.refused(one(id="a.b")).key, "pusher.apps[0].id")
        self.assertEqual(self.refused(one(key="a/b")).key, "pusher.apps[0].key")
        self.assertEqual(self.refused(one(key="a:b")).key, "pusher.apps[0].key")
        self.assertEqual(self.refused(one(key=7)).key, "pusher.apps[0].key")

    def test_the_second_table_is_named(self):
        raw = one() + [{"id": "2", "key": "k2", "secret": "", "enabled": True}]
        self.assertEqual(str(self.refused(raw)), "pusher.apps[1].secret: must be a "
                                                 "non-empty string")

    def test_unique_id_and_key(self):
        e = self.refused(one() + [{"id": "1", "key": "other", "secret": "s"}])
        self.assertEqual(e.key, "pusher.apps[1].id")
        self.assertIn("pusher.apps[0]", e.problem)
        e = self.refused(one() + [{"id": "2", "key": "k", "secret": "s"}])
        self.assertEqual(e.key, "pusher.apps[1].key")

    def test_unknown_setting(self):
        e = self.refused(one(secert="x"))
        self.assertEqual(e.key, "pusher.apps[0].secert")
        self.assertIn("unknown setting", e.problem)

    def test_switches(self):
        for key in ("enabled", "client_events", "user_authentication"):
            self.assertEqual(check_apps(one(**{key: True}))[0][key], True)
            e = self.refused(one(**{key: "yes"}))
            self.assertEqual(e.key, f"pusher.apps[0].{key}")
            self.assertIn("true or false", e.problem)

    def test_numbers(self):
        self.assertEqual(check_apps(one(max_connections=0))[0]["max_connections"], 0)
        for key, bad in (("max_connections", -1), ("max_connections", True),
                         ("max_connections", 1.5), ("max_event_bytes", 0),
                         ("max_event_bytes", 10 ** 9), ("max_channel_name", 201),
                         ("max_channel_name", 0)):
            self.assertEqual(self.refused(one(**{key: bad})).key, f"pusher.apps[0].{key}")

    def test_rates(self):
        """Whole numbers of events a second, 0 for no limit."""
        for key in ("max_client_events_per_second", "max_backend_events_per_second"):
            self.assertEqual(check_apps(one(**{key: 0}))[0][key], 0)
            for bad in (-1, 2.5, "10", True, 10 ** 7):
                e = self.refused(one(**{key: bad}))
                self.assertEqual(e.key, f"pusher.apps[0].{key}")
                self.assertIn("events a second; 0 = no limit", e.problem)

    def test_allowed_origins(self):
        """One line naming the entry that is wrong, and what an entry may be."""
        def bad(value):
            e = self.refused(one(allowed_origins=value))
            return e.key, e.problem
        key, problem = bad(["https://ok.example", "https://x.example/path"])
        self.assertEqual(key, "pusher.apps[0].allowed_origins[1]")
        self.assertIn("no path", problem)
        key, problem = bad(["localhost:3000"])
        self.assertEqual(key, "pusher.apps[0].allowed_origins[0]")
        self.assertIn("a port needs the scheme", problem)
        for value in (["app.*"], [""], [5], ["a b"]):
            self.assertEqual(bad(value)[0], "pusher.apps[0].allowed_origins[0]", value)
        for value in ([], "https://x.example", None):
            key, problem = bad(value)
            self.assertEqual(key, "pusher.apps[0].allowed_origins")
            self.assertIn('["*"]: any origin', problem)
        self.assertEqual(check_apps(one(allowed_origins=["*", "*", "NULL"]))[0]
                         ["allowed_origins"], ["*", "null"])

    def test_webhooks(self):
        def bad(hooks):
            return self.refused(one(webhooks=hooks)).key
        self.assertEqual(bad({"url": "https://x"}), "pusher.apps[0].webhooks")
        self.assertEqual(bad(["https://x"]), "pusher.apps[0].webhooks[0]")
        self.assertEqual(bad([{"url": "ftp://x", "events": ["channel_occupied"]}]),
                         "pusher.apps[0].webhooks[0].url")
        self.assertEqual(bad([{"url": "https://x", "events": []}]),
                         "pusher.apps[0].webhooks[0].events")
        self.assertEqual(bad([{"url": "https://x", "events": ["channel_created"]}]),
                         "pusher.apps[0].webhooks[0].events")
        self.assertEqual(bad([{"url": "https://x", "events": ["member_added"], "x": 1}]),
                         "pusher.apps[0].webhooks[0].x")
        good = check_apps(one(webhooks=[{"url": "https://x/h", "events": [
            "member_added", "member_added", "client_event"]}]))
        self.assertEqual(good[0]["webhooks"], [{"url": "https://x/h",
                                                "events": ["member_added", "client_event"]}])

    def test_separator(self):
        """The id may not hold the namespace separator, and the namespace
        pusher.<id> may not either."""
        self.assertEqual(self.refused(one(id="a-b"), separator="-").key, "pusher.apps[0].id")
        e = self.refused(one(), separator=".")
        self.assertIn("policy.namespace_separator", e.problem)
        self.assertEqual(len(check_apps(one(id="a-b"), separator="::")), 1)

    def test_input_not_changed(self):
        raw = one(webhooks=[{"url": "https://x", "events": ["client_event"]}])
        check_apps(raw)[0]["webhooks"][0]["events"].append("member_added")
        self.assertEqual(raw[0]["webhooks"][0]["events"], ["client_event"])


class AppsTests(unittest.TestCase):

    def setUp(self):
        self.apps = Apps(check_apps(tomllib.loads(TOML)["pusher"]["apps"]))
        self.app = self.apps.by_id("1001")

    def test_lookups(self):
        self.assertEqual(len(self.apps), 2)
        self.assertEqual([a.id for a in self.apps], ["1001", "shop"])
        self.assertIs(self.apps.by_key("app-key"), self.app)
        self.assertIs(self.apps.by_key("shop-key"), self.apps.by_id("shop"))
        self.assertIsNone(self.apps.by_key("1001"))
        self.assertIsNone(self.apps.by_id("app-key"))

    def test_app(self):
        shop = self.apps.by_id("shop")
        self.assertIsInstance(shop, PusherApp)
        self.assertEqual(shop.webhooks[1], Webhook("http://other.example/hook",
                                                   ("client_event",)))
        self.assertEqual(shop.webhook_urls("member_added"), ["https://backend.example/pusher"])
        self.assertEqual(shop.webhook_urls("client_event"), ["http://other.example/hook"])
        self.assertEqual(shop.webhook_urls("channel_vacated"), [])
        self.assertNotIn("shop-secret", repr(shop))
        self.assertEqual(shop.namespace, "pusher.shop")

    def test_group_mapping(self):
        self.assertEqual(self.apps.group_of(self.app, "chat"), "pusher.1001:chat")
        self.assertEqual(self.apps.group_of(self.app, "presence-room.1"),
                         "pusher.1001:presence-room.1")
        self.assertEqual(self.apps.channel_of(self.app, "pusher.1001:chat"), "chat")
        self.assertIsNone(self.apps.channel_of(self.app, "pusher.shop:chat"))
        self.assertIsNone(self.apps.channel_of(self.app, "pusher.1001:"))
        self.assertIsNone(self.apps.channel_of(self.app, "chat"))
        self.assertIsNone(self.apps.channel_of(self.app, "pusher.10011:chat"))

    def test_round_trip(self):
        for channel in ("chat", "private-a;b", "presence-x=1@y,z", "#server-to-user-7"):
            group = self.apps.group_of(self.app, channel)
            self.assertEqual(self.apps.channel_of(self.app, group), channel)
            self.assertEqual(self.apps.locate(group), (self.app, channel))

    def test_locate(self):
        self.assertEqual(self.apps.locate("pusher.shop:news"),
                         (self.apps.by_id("shop"), "news"))
        for group in ("news", "team:7", "pusher.nope:news", "pusher.1001", "pusher.1001:",
                      "pusher:1001:news"):
            self.assertIsNone(self.apps.locate(group), group)

    def test_other_separator(self):
        apps = Apps(check_apps(one(), "::"), separator="::")
        app = apps.by_id("1")
        self.assertEqual(apps.group_of(app, "chat"), "pusher.1::chat")
        self.assertEqual(apps.locate("pusher.1::chat"), (app, "chat"))
        self.assertIsNone(apps.locate("pusher.1:chat"))

    def test_namespace_of_the_group(self):
        """pushsvc's namespaces see the group in the app's namespace."""
        namespaces = Namespaces({"pusher.1001": {"client_send": "none"}})
        group = self.apps.group_of(self.app, "private-ab")
        self.assertEqual(namespaces.name_of(group), "pusher.1001")
        self.assertEqual(namespaces.of(group).client_send, "none")
