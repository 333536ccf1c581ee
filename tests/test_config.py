"""Settings: defaults, the TOML file, command-line overrides, and one-line errors."""

import os
from dataclasses import replace

from twisted.trial import unittest

from pushsvc.config import ConfigError, Settings, build_settings, default_node_name

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "etc", "pushsvc.toml")


class BuildSettingsTests(unittest.TestCase):
    def write(self, text, mode="w"):
        path = self.mktemp()
        with open(path, mode) as f:
            f.write(text)
        return path

    def error(self, config_path=None, overrides=None):
        e = self.assertRaises(ConfigError, build_settings, config_path, overrides)
        self.assertEqual(str(e), f"{e.setting}: {e.problem}")
        return str(e)

    def test_defaults(self):
        settings = build_settings()
        self.assertEqual(settings, Settings(node=default_node_name()))
        self.assertEqual((settings.port, settings.workers, settings.max_message_bytes,
                          settings.client_send, settings.ping_interval, settings.ping_timeout),
                         (8080, None, 65536, "joined", 25.0, 60.0))
        self.assertEqual(settings.endpoints, ["tcp:8080:backlog=1024"])
        self.assertIsNone(settings.config_path)
        self.assertRegex(settings.node, r"^[A-Za-z0-9_-]{1,32}$")

    def test_file_values(self):
        path = self.write('[server]\nport = 9001\nworkers = 0\nnode = "edge-1"\n'
                          'listen = ["tcp:9002", "unix:/tmp/p.sock"]\n'
                          '[limits]\nmax_connections = 50\nmax_targets = 3\n'
                          '[timeouts]\nping_interval = 5\nping_timeout = 7.5\n'
                          '[http]\napi_keys = ["k1", "k2"]\n'
                          '[policy]\nclient_send = "any"\n')
        settings = build_settings(path)
        self.assertEqual(settings, Settings(
            port=9001, workers=0, node="edge-1", listen=["tcp:9002", "unix:/tmp/p.sock"],
            max_connections=50, max_targets=3, ping_interval=5.0, ping_timeout=7.5,
            api_keys=["k1", "k2"], client_send="any", config_path=os.path.abspath(path)))
        self.assertEqual(settings.endpoints, ["tcp:9002", "unix:/tmp/p.sock"])

    def test_listen_single_string(self):
        self.assertEqual(build_settings(self.write('[server]\nlisten = "tcp:1"\n')).listen,
                         ["tcp:1"])

    def test_command_line_beats_file(self):
        path = self.write('[server]\nport = 9001\nworkers = 4\nnode = "file"\n'
                          '[limits]\nmax_connections = 50\n')
        settings = build_settings(path, {"port": "9100", "workers": "0", "node": None,
                                         "listen": ["tcp:1", "tcp:2"],
                                         "max_connections": None})
        self.assertEqual((settings.port, settings.workers, settings.node,
                          settings.listen, settings.max_connections),
                         (9100, 0, "file", ["tcp:1", "tcp:2"], 50))

    def test_workers_auto(self):
        self.assertIsNone(build_settings(overrides={"workers": "auto"}).workers)
        self.assertIsNone(build_settings(self.write('[server]\nworkers = "auto"\n')).workers)
        self.assertEqual(build_settings(overrides={"workers": "3"}).workers, 3)

    def test_empty_node_is_host_name(self):
        self.assertEqual(build_settings(self.write('[server]\nnode = ""\n')).node,
                         default_node_name())

    def test_bad_command_line_values_name_the_flag(self):
        cases = [
            ({"port": "http"}, "--port: must be a whole number, got 'http'"),
            ({"port": "70000"}, "--port: must be at least 0 and at most 65535, got 70000"),
            ({"port": "-1"}, "--port: must be at least 0 and at most 65535, got -1"),
            ({"port": "1.5"}, "--port: must be a whole number, got '1.5'"),
            ({"workers": "many"}, "--workers: must be a whole number, got 'many'"),
            ({"workers": "257"}, "--workers: must be at least 0 and at most 256, got 257"),
            ({"node": "bad node!"}, "--node: must be 1-32 letters, digits, '_' or '-'"),
            ({"node": "n" * 33}, "--node: must be 1-32 letters, digits, '_' or '-'"),
            ({"node": "a.b"}, "--node: must be 1-32 letters, digits, '_' or '-'"),
            ({"listen": [""]}, "--listen: must be a list of Twisted endpoint strings"),
            ({"max_connections": 0},
             "limits.max_connections: must be at least 1, got 0"),
            ({"ping_interval": "soon"},
             "timeouts.ping_interval: must be a number of seconds, got 'soon'"),
        ]
        for overrides, expected in cases:
            self.assertEqual(self.error(overrides=overrides), expected)

    def test_bad_file_values_name_the_setting(self):
        cases = [
            ("[server]\nport = true", "server.port: must be a whole number, got True"),
            ("[server]\nport = 80.0", "server.port: must be a whole number, got 80.0"),
            # a file has types: a number in quotes is a string, not a number
            ("[server]\nport = \"8090\"", "server.port: must be a whole number, got '8090'"),
            ("[server]\nworkers = \"2\"", "server.workers: must be a whole number, got '2'"),
            ("[timeouts]\nping_interval = \"5\"",
             "timeouts.ping_interval: must be a number of seconds, got '5'"),
            ("[limits]\nmessages_per_second = \"5\"",
             "limits.messages_per_second: must be a number per second, got '5'"),
            ("[server]\nlisten = [1]", "server.listen: must be a list of Twisted endpoint "
                                       "strings"),
            ("[server]\nnode = 7", "server.node: must be 1-32 letters, digits, '_' or '-'"),
            ("[limits]\nmax_connections = 0",
             "limits.max_connections: must be at least 1, got 0"),
            ("[limits]\nmax_message_bytes = 63",
             "limits.max_message_bytes: must be at least 64 and at most 16777216, got 63"),
            ("[limits]\nmax_buffered_bytes = \"lots\"",
             "limits.max_buffered_bytes: must be a whole number, got 'lots'"),
            ("[timeouts]\nclose_timeout = 0.01",
             "timeouts.close_timeout: must be at least 0.1 seconds and finite, got 0.01"),
            ("[timeouts]\nhandshake_timeout = false",
             "timeouts.handshake_timeout: must be a number of seconds, got False"),
            ("[timeouts]\nping_interval = nan",
             "timeouts.ping_interval: must be at least 0.1 seconds and finite, got nan"),
            ("[timeouts]\nhandshake_timeout = inf",
             "timeouts.handshake_timeout: must be at least 0.1 seconds and finite, got inf"),
            ("[http]\napi_keys = \"secret\"",
             "http.api_keys: must be a list of non-empty strings"),
            ("[http]\napi_keys = [\"\"]", "http.api_keys: must be a list of non-empty strings"),
            ("[policy]\nclient_send = \"all\"",
             "policy.client_send: must be one of joined, any, none; got 'all'"),
        ]
        for text, expected in cases:
            self.assertEqual(self.error(self.write(text + "\n")), expected)

    def test_unknown_keys(self):
        path = self.write("[limits]\nmax_conections = 5\n")
        self.assertEqual(self.error(path), f"limits.max_conections: unknown setting in {path}")
        path = self.write("[serve]\nport = 1\n")
        self.assertEqual(self.error(path), f"serve.port: unknown setting in {path}")
        path = self.write("port = 1\n")
        self.assertEqual(self.error(path), f"port: unknown setting in {path}")

    def test_invalid_toml(self):
        path = self.write("[server\nport = 1\n")
        self.assertTrue(self.error(path).startswith(f"--config: {path} is not valid TOML: "))

    def test_invalid_utf8(self):
        path = self.write(b'[server]\nnode = "\xff"\n', "wb")
        self.assertTrue(self.error(path).startswith(f"--config: {path} is not valid TOML: "))

    def test_missing_file(self):
        path = self.mktemp()
        self.assertEqual(self.error(path),
                         f"--config: cannot read {path}: No such file or directory")

    def test_ping_timeout_below_interval(self):
        path = self.write("[timeouts]\nping_interval = 30\nping_timeout = 20\n")
        self.assertEqual(self.error(path),
                         "timeouts.ping_timeout: must be at least timeouts.ping_interval")
        settings = build_settings(self.write("[timeouts]\nping_interval = 30\n"
                                             "ping_timeout = 30\n"))
        self.assertEqual((settings.ping_interval, settings.ping_timeout), (30.0, 30.0))

    def test_sample_file_holds_the_defaults(self):
        if not os.path.exists(SAMPLE):
            raise unittest.SkipTest(f"{SAMPLE} is not written yet")
        self.assertEqual(replace(build_settings(SAMPLE), config_path=None), build_settings())


class AdminEndpointTests(unittest.TestCase):
    def test_tcp_only_on_loopback_however_the_interface_is_written(self):
        ok = ["tcp:9000:interface=127.0.0.1", "tcp6:9000:interface=\\:\\:1"]
        refused = ["tcp:9000", "tcp:interface=127.0.0.1:port=9000:interface=0.0.0.0",
                   "tcp:9000:interface=127.0.0.1x", "ssl:9000:interface=127.0.0.1"]
        for value in ok:
            self.assertEqual(build_settings(None, {"admin": value, "admin_secret": "s"}).admin,
                             value)
        for value in refused:
            with self.assertRaises(ConfigError, msg=value):
                build_settings(None, {"admin": value, "admin_secret": "s"})
