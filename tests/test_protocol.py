"""The wire format: parse_request, parse_address, Address and the frame encoders."""

import json

from twisted.trial import unittest

from pushsvc.frames import error_frame, message_frame, reply_frame
from pushsvc.protocol import (BAD_REQUEST, MAX_NAME, TOO_LARGE, UNKNOWN_OP, Address,
                              ProtocolError, Request, decode_json, encode, parse_address,
                              parse_request)


class ParseRequestTests(unittest.TestCase):
    def parse(self, frame, **kw):
        return parse_request(json.dumps(frame), **kw)

    def refused(self, text, code=BAD_REQUEST, **kw):
        """Parse ``text`` (str/bytes, or an object to dump) and return its ProtocolError."""
        if not isinstance(text, (str, bytes)):
            text = json.dumps(text)
        e = self.assertRaises(ProtocolError, parse_request, text, **kw)
        self.assertEqual(e.code, code, e.message)
        return e

    def test_ping(self):
        self.assertEqual(self.parse({"op": "ping"}), Request("ping"))
        self.assertEqual(self.parse({"op": "ping", "ref": 7}), Request("ping", 7))

    def test_join_and_leave(self):
        self.assertEqual(self.parse({"op": "join", "group": "g1", "ref": "a"}),
                         Request("join", "a", group="g1"))
        self.assertEqual(self.parse({"op": "leave", "group": "g1"}),
                         Request("leave", None, group="g1"))

    def test_auth_user_and_token(self):
        self.assertEqual(self.parse({"op": "auth", "user": "u1"}),
                         Request("auth", user="u1"))
        self.assertEqual(self.parse({"op": "auth", "token": "t.k.n"}),
                         Request("auth", token="t.k.n"))

    def test_send(self):
        request = self.parse({"op": "send", "to": {"group": "g1"}, "data": {"x": [1]},
                              "ref": 3})
        self.assertEqual(request, Request("send", 3, to=Address(group=("g1",)),
                                          data={"x": [1]}))

    def test_send_null_data_is_data(self):
        request = self.parse({"op": "send", "to": {"all": True}, "data": None})
        self.assertEqual(request, Request("send", to=Address(all=True), data=None))

    def test_bytes_accepted(self):
        self.assertEqual(parse_request(b'{"op":"ping","ref":"\xc3\xa9"}'),
                         Request("ping", "\u00e9"))

    def test_invalid_json(self):
        e = self.refused('{"op":')
        self.assertEqual(e.message, "not valid JSON")
        self.assertIsNone(e.ref)

    def test_invalid_utf8(self):
        self.assertEqual(self.refused(b'{"op":"\xff"}').message,
                         "not valid JSON")

    def test_non_objects(self):
        for text in ("[1, 2]", '"ping"', "42", "null", "true"):
            e = self.refused(text)
            self.assertEqual(e.message, "a frame must be a JSON object", text)

    def test_missing_op_keeps_ref(self):
        e = self.refused({"ref": "r1"})
        self.assertEqual((e.message, e.ref), ("'op' must be a string", "r1"))

    def test_op_not_a_string(self):
        for op in (1, None, ["ping"], {"x": 1}, True):
            e = self.refused({"op": op, "ref": 5})
            self.assertEqual((e.message, e.ref), ("'op' must be a string", 5))

    def test_unknown_op(self):
        e = self.refused({"op": "dance", "ref": False}, code=UNKNOWN_OP)
        self.assertEqual((e.message, e.ref), ("unknown op 'dance'", False))

    def test_unknown_op_name_cut_in_message(self):
        e = self.refused({"op": "x" * 10000}, code=UNKNOWN_OP)
        self.assertEqual(e.message, f"unknown op '{'x' * MAX_NAME}'")

    def test_group_must_be_non_empty_string(self):
        for group in (None, 5, "", ["g"], {"g": 1}):
            for op in ("join", "leave"):
                e = self.refused({"op": op, "group": group, "ref": 1.5})
                self.assertEqual((e.message, e.ref),
                                 ("'group' must be a non-empty string", 1.5))
        e = self.refused({"op": "join"})
        self.assertEqual(e.message, "'group' must be a non-empty string")

    def test_names_too_long(self):
        self.assertEqual(self.parse({"op": "join", "group": "g" * MAX_NAME}).group,
                         "g" * MAX_NAME)
        e = self.refused({"op": "join", "group": "g" * (MAX_NAME + 1)})
        self.assertEqual(e.message, f"'group' is longer than {MAX_NAME} characters")
        e = self.refused({"op": "auth", "user": "u" * (MAX_NAME + 1)})
        self.assertEqual(e.message, f"'user' is longer than {MAX_NAME} characters")

    def test_names_with_a_lone_surrogate(self):
        # json.dumps writes "\ud800" as an escape, which decodes to a str that
        # has no UTF-8 form.
        for frame, what in (({"op": "join", "group": "g\ud800"}, "group"),
                            ({"op": "leave", "group": "\udfff"}, "group"),
                            ({"op": "auth", "user": "\ud800u"}, "user"),
                            ({"op": "send", "to": {"tag": ["t", "\ud800"]}, "data": 1},
                             "to.tag")):
            e = self.refused(dict(frame, ref=2))
            self.assertEqual((e.message, e.ref),
                             (f"'{what}' must be valid Unicode (it holds a lone surrogate)", 2))
        # A pair of surrogate escapes is one character, and valid.
        self.assertEqual(parse_request('{"op":"join","group":"\\ud83d\\ude00"}').group,
                         "\U0001f600")

    def test_unknown_op_with_a_lone_surrogate(self):
        e = self.refused({"op": "\ud800", "ref": 1}, code=UNKNOWN_OP)
        self.assertEqual(json.loads(error_frame(e, e.ref)),
                         {"op": "error", "code": "unknown_op", "message": "unknown op '\ud800'",
                          "ref": 1})

    def test_auth_mistyped(self):
        self.assertEqual(self.refused({"op": "auth"}).message,
                         "'user' must be a non-empty string")
        self.assertEqual(self.refused({"op": "auth", "user": 3}).message,
                         "'user' must be a non-empty string")
        for token in ("", 3, None):
            self.assertEqual(self.refused({"op": "auth", "token": token}).message,
                             "'token' must be a non-empty string")

    def test_ref_scalars_echoed_on_error(self):
        for ref in ("s", 0, -1, 2.5, True, False):
            self.assertEqual(self.refused({"op": "join", "ref": ref}).ref, ref)

    def test_ref_object_or_array_rejected(self):
        for ref in ({"a": 1}, [1]):
            e = self.refused({"op": "ping", "ref": ref})
            self.assertEqual(e.message, "'ref' must be a string, number, boolean or null")
            self.assertIsNone(e.ref)

    def test_nan_and_infinity_rejected(self):
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "-1e999"):
            e = self.refused('{"op":"send","to":{"all":true},"data":%s}' % literal)
            self.assertEqual(e.message, "not valid JSON", literal)
            self.refused('{"op":"ping","ref":%s}' % literal)

    def test_deep_nesting(self):
        depth = 10000
        e = self.refused("[" * depth + "]" * depth)
        self.assertEqual(e.message, "JSON nested too deep")
        e = self.refused('{"op":"ping","ref":1,"x":' + '{"a":' * depth + "1" + "}" * depth
                         + "}")
        self.assertEqual(e.message, "JSON nested too deep")

    def test_huge_integer(self):
        e = self.refused('{"op":"ping","ref":' + "9" * 10 ** 5 + "}")
        self.assertEqual(e.message, "not valid JSON")
        self.refused("1" * 10 ** 5)

    def test_send_without_data(self):
        e = self.refused({"op": "send", "to": {"group": "g"}, "ref": "q"})
        self.assertEqual((e.message, e.ref), ("'send' needs 'data'", "q"))

    def test_send_bad_address_keeps_ref(self):
        e = self.refused({"op": "send", "to": {"planet": "x"}, "data": 1, "ref": 9})
        self.assertEqual((e.message, e.ref), ("'to' has unknown key 'planet'", 9))

    def test_send_max_targets(self):
        frame = {"op": "send", "to": {"group": ["a", "b", "c"]}, "data": 1, "ref": 2}
        self.assertEqual(self.parse(frame, max_targets=3).to, Address(group=("a", "b", "c")))
        e = self.refused(frame, code=TOO_LARGE, max_targets=2)
        self.assertEqual((e.message, e.ref), ("'to' names 3 targets; the limit is 2", 2))


class DecodeJsonTests(unittest.TestCase):
    """decode_json (one shared decoder) reads what json.loads reads, in every
    encoding it detects, and refuses what it refuses, NaN and 1e400 too."""

    def test_as_json_loads(self):
        good = {b'{"a":1}': {"a": 1}, '{"a":1}': {"a": 1}, b"[1.5]": [1.5],
                b'{"a":"\\ud800"}': {"a": "\ud800"}, b'"\xed\xa0\x80"': "\ud800",
                '{"a":"\u00e9"}'.encode("utf-16"): {"a": "\u00e9"},
                '{"a":"\u00e9"}'.encode("utf-16-le"): {"a": "\u00e9"},
                '{"a":"\u00e9"}'.encode("utf-32"): {"a": "\u00e9"},
                b"\xef\xbb\xbf{}": {}}  # bytes may start with UTF-8's mark, text may not
        for text, value in good.items():
            self.assertEqual(decode_json(text), value, text)
        bad = [b"NaN", b"-Infinity", b"1e400", b"", b"  ", b'{"a":1} x', b"\x80abc", b"\xff\xfe",
               b"[" * 100000, "\ufeff{}"]
        for text in bad:
            with self.assertRaises(ProtocolError, msg=repr(text)[:40]) as caught:
                decode_json(text)
            self.assertEqual(caught.exception.code, BAD_REQUEST)


class ParseAddressTests(unittest.TestCase):
    def refused(self, value, code=BAD_REQUEST, max_targets=100):
        e = self.assertRaises(ProtocolError, parse_address, value, max_targets)
        self.assertEqual(e.code, code, e.message)
        return e.message

    def test_single_names(self):
        for kind in ("session", "user", "group", "tag"):
            self.assertEqual(parse_address({kind: "n1"}, 100), Address(**{kind: ("n1",)}))

    def test_lists_and_combinations(self):
        self.assertEqual(
            parse_address({"user": ["u1", "u2"], "group": "g", "tag": ["t"],
                           "session": "a.0.x.1"}, 100),
            Address(session=("a.0.x.1",), user=("u1", "u2"), group=("g",), tag=("t",)))

    def test_duplicates_collapse_in_order(self):
        self.assertEqual(parse_address({"group": ["b", "a", "b", "a", "c"]}, 3),
                         Address(group=("b", "a", "c")))

    def test_all(self):
        self.assertEqual(parse_address({"all": True}, 1), Address(all=True))
        for value in (False, 1, "true", None):
            self.assertEqual(self.refused({"all": value}), "'to.all' must be true")

    def test_not_an_object_or_empty(self):
        for value in (None, "g1", ["g1"], 3, {}):
            self.assertEqual(self.refused(value), "'to' must be a non-empty object")

    def test_unknown_key(self):
        self.assertEqual(self.refused({"group": "g", "zz": 1, "aa": 2}),
                         "'to' has unknown key 'aa'")

    def test_empty_list(self):
        self.assertEqual(self.refused({"user": []}), "'to.user' is an empty list")

    def test_bad_names(self):
        self.assertEqual(self.refused({"tag": ["ok", 3]}),
                         "'to.tag' must be a non-empty string")
        self.assertEqual(self.refused({"session": "n.0.i.\ud800"}),
                         "'to.session' must be valid Unicode (it holds a lone surrogate)")
        self.assertEqual(self.refused({"session": ""}),
                         "'to.session' must be a non-empty string")
        self.assertEqual(self.refused({"group": [["g"]]}),
                         "'to.group' must be a non-empty string")
        self.assertEqual(self.refused({"user": "u" * (MAX_NAME + 1)}),
                         f"'to.user' is longer than {MAX_NAME} characters")

    def test_max_targets_counts_every_kind_after_dedup(self):
        self.assertEqual(parse_address({"user": ["u", "u", "v"], "group": "g"}, 3),
                         Address(user=("u", "v"), group=("g",)))
        self.assertEqual(
            self.refused({"user": ["u", "v"], "group": ["g", "h"]}, TOO_LARGE, 3),
            "'to' names 4 targets; the limit is 3")


class EncodeTests(unittest.TestCase):
    def test_address_to_json_round_trip(self):
        for wire in ({"group": "g"}, {"user": ["u1", "u2"]}, {"all": True},
                     {"session": "n.0.i.1", "user": "u", "group": ["a", "b"],
                      "tag": "t", "all": True}):
            address = parse_address(wire, 100)
            self.assertEqual(address.to_json(), wire)
            self.assertEqual(parse_address(address.to_json(), 100), address)

    def test_address_to_json_after_dedup(self):
        self.assertEqual(parse_address({"tag": ["t", "t"]}, 100).to_json(), {"tag": "t"})

    def test_encode_is_compact_utf8(self):
        self.assertEqual(encode({"op": "msg", "data": {"a": [1, 2]}, "t": "\u00e9"}),
                         '{"op":"msg","data":{"a":[1,2]},"t":"\u00e9"}'.encode("utf-8"))

    def test_encode_escapes_when_a_string_has_no_utf8_form(self):
        frame = {"op": "msg", "data": ["\ud800", "\u00e9"], "ref": "\udfff"}
        self.assertEqual(encode(frame),
                         b'{"op":"msg","data":["\\ud800","\\u00e9"],"ref":"\\udfff"}')
        self.assertEqual(json.loads(encode(frame)), frame)

    def test_message_frame_with_a_lone_surrogate_in_data(self):
        frame = message_frame("i", Address(group=("g\u00e9",)), {"t": "a\ud800"}, max_data=20)
        self.assertEqual(frame, '{"op":"msg","id":"i","to":{"group":"g\u00e9"},'
                                '"data":{"t":"a\\ud800"}}'.encode("utf-8"))
        self.assertEqual(json.loads(frame)["data"], {"t": "a\ud800"})

    def test_message_frame(self):
        self.assertEqual(message_frame("id1", Address(group=("g",)), {"k": "v"}),
                         b'{"op":"msg","id":"id1","to":{"group":"g"},"data":{"k":"v"}}')
        self.assertEqual(
            message_frame("id2", Address(user=("a", "b")), 1, {"session": "s", "user": None}),
            b'{"op":"msg","id":"id2","to":{"user":["a","b"]},'
            b'"from":{"session":"s","user":null},"data":1}')

    def test_message_frame_data_limit(self):
        self.assertEqual(message_frame("i", Address(all=True), "x" * 8, max_data=10),
                         b'{"op":"msg","id":"i","to":{"all":true},"data":"xxxxxxxx"}')
        with self.assertRaises(ProtocolError) as caught:
            message_frame("i", Address(all=True), "x" * 9, max_data=10)
        self.assertEqual((caught.exception.code, caught.exception.message),
                         ("too_large", "'data' is 11 bytes encoded; the limit is 10"))

    def test_reply_and_error_frames(self):
        self.assertEqual(reply_frame("ok"), b'{"op":"ok"}')
        self.assertEqual(reply_frame("ok", 0), b'{"op":"ok","ref":0}')
        self.assertEqual(reply_frame("ok", "r", id="m"), b'{"op":"ok","id":"m","ref":"r"}')
        error = ProtocolError(UNKNOWN_OP, "unknown op 'x'")
        self.assertEqual(error_frame(error),
                         b'{"op":"error","code":"unknown_op","message":"unknown op \'x\'"}')
        self.assertEqual(error_frame(error, False),
                         b'{"op":"error","code":"unknown_op","message":"unknown op \'x\'",'
                         b'"ref":false}')


class WelcomeFrameTests(unittest.TestCase):
    def test_same_bytes_as_a_reply_frame(self):
        """The welcome built from parts is the JSON reply_frame encodes."""
        from pushsvc.frames import reply_frame, welcome_frame
        for user, epoch, ref in [(None, None, None), ("u1", "e1", None),
                                 ('a "quoted" \\ \u00e9 \ud83d\ude00 user', "e2", 7),
                                 ("\ud800", None, "r")]:
            fields = {"session": "web1.0.x.1", "user": user}
            if epoch is not None:
                fields["epoch"] = epoch
            self.assertEqual(welcome_frame("web1.0.x.1", user, epoch, ref),
                             reply_frame("welcome", ref, **fields))


class AddressJsonTests(unittest.TestCase):
    def test_from_json_gives_back_what_to_json_wrote(self):
        for address in (Address(all=True), Address(user=("u",)),
                        Address(session=("a.0.i.1", "a.0.i.2"), group=("g",), tag=("t", "é"))):
            self.assertEqual(Address.from_json(json.loads(json.dumps(address.to_json()))),
                             address)

    def test_to_text_is_to_json_encoded(self):
        for address in (Address(all=True), Address(user=("u",)), Address(group=("é g",)),
                        Address(tag=('a"b\\\\c',)), Address(user=("a", "b")),
                        Address(session=("a.0.i.1",), group=("g",)), Address(user=("\ud800",))):
            self.assertEqual(address.to_text(), encode(address.to_json()))
            self.assertEqual(Address.from_json(json.loads(address.to_text())), address)

    def test_encoding_a_string_matches_json(self):
        for text in ("plain", "é\u2028", 'q"\\', "\ud800 lone", "tab\t"):
            self.assertEqual(json.loads(encode(text)), text)
