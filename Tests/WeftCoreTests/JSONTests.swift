import Testing
import WeftCore

@Suite struct JSONValueTests {
    @Test func parsesEveryKind() throws {
        let v = try JSONValue.parse(#"""
        {"s": "text", "i": 42, "neg": -7, "f": 1.5, "e": 2.5e3, "t": true, "fa": false, "n": null,
         "a": [1, "two", [3], {"four": 4}], "o": {"k": "v"}, "empty": {}, "none": []}
        """#)
        #expect(v["s"] == .string("text"))
        #expect(v["i"] == .number(42))
        #expect(v["i"]?.intValue == 42)
        #expect(v["neg"]?.intValue == -7)
        #expect(v["f"] == .number(1.5))
        #expect(v["e"] == .number(2500))
        #expect(v["t"] == .bool(true))
        #expect(v["fa"]?.boolValue == false)
        #expect(v["n"]?.isNull == true)
        #expect(v["a"] == .array([.number(1), .string("two"), .array([.number(3)]), .object([("four", .number(4))])]))
        #expect(v["o"]?["k"]?.stringValue == "v")
        #expect(v["empty"] == .object([]))
        #expect(v["none"] == .array([]))
        #expect(v["missing"] == nil)
    }

    @Test func parsesTopLevelScalarsAndBytes() throws {
        #expect(try JSONValue.parse("[]") == .array([]))
        #expect(try JSONValue.parse(Array(#"{"a":[true,null]}"#.utf8)) == .object([("a", .array([.bool(true), .null]))]))
        #expect(try JSONValue.parse(#""x""#) == .string("x"))
        #expect(try JSONValue.parse("3") == .number(3))
        #expect(try JSONValue.parse("null") == .null)
    }

    @Test func stringEscapesAreDecoded() throws {
        let v = try JSONValue.parse(#"["a\"b", "c\\d", "e\/f", "\n\r\t\b\f", "\u00e9", "\ud83d\ude00", "\u0001"]"#)
        #expect(v == .array([
            .string("a\"b"), .string("c\\d"), .string("e/f"), .string("\n\r\t\u{08}\u{0C}"),
            .string("é"), .string("😀"), .string("\u{01}"),
        ]))
    }

    @Test func serializesInInsertionOrder() {
        let v: JSONValue = .object([("zeta", .number(1)), ("alpha", .string("x")), ("mid", .array([.bool(true), .null]))])
        #expect(v.serialized() == #"{"zeta":1,"alpha":"x","mid":[true,null]}"#)
        #expect(JSONValue.object([]).serialized() == "{}")
        #expect(JSONValue.array([]).serialized() == "[]")
    }

    @Test func serializesNumbers() {
        #expect(JSONValue.number(0).serialized() == "0")
        #expect(JSONValue.number(-3).serialized() == "-3")
        #expect(JSONValue.number(1500).serialized() == "1500")
        #expect(JSONValue.number(123_456_789_012).serialized() == "123456789012")
        #expect(JSONValue.number(1.5).serialized() == "1.5")
        #expect(JSONValue.number(-0.25).serialized() == "-0.25")
    }

    @Test func serializesEscapes() {
        let s = JSONValue.string("a\"b\\c\nd\re\tf\u{01}g\u{1f}é😀/").serialized()
        #expect(s == #""a\"b\\c\nd\re\tf\u0001g\u001fé😀/""#)
        // Keys are escaped too.
        #expect(JSONValue.object([("k\"ey", .null)]).serialized() == #"{"k\"ey":null}"#)
    }

    @Test func prettyLayout() {
        let v: JSONValue = .object([("a", .array([.number(1), .number(2)])), ("b", .object([])), ("c", .object([("d", .string("e"))]))])
        let expected = """
        {
            "a": [
                1,
                2
            ],
            "b": {},
            "c": {
                "d": "e"
            }
        }
        """
        #expect(v.serialized(pretty: true) == expected)
    }

    static let roundTripSamples: [JSONValue] = [
        .null, .bool(true), .bool(false), .number(0), .number(-12), .number(0.1), .number(-2.5e-7), .number(1e15),
        .number(1e300), .number(123_456_789_012_345), .string(""), .string("quote \" back \\ nl \n tab \t ctl \u{02} é 😀"),
        .array([]), .object([]),
        .object([("a", .array([.number(1), .string("2"), .null, .object([("x", .bool(false))])])),
                 ("b", .object([("c", .object([("d", .array([.array([])]))]))])),
                 ("cniVersion", .string("1.1.0"))]),
    ]

    @Test(arguments: roundTripSamples)
    func roundTrips(value: JSONValue) throws {
        #expect(try JSONValue.parse(value.serialized()) == value)
        #expect(try JSONValue.parse(value.serialized(pretty: true)) == value)
    }

    @Test func parseKeepsDocumentOrderAndEqualDocumentsCompareEqual() throws {
        let a = try JSONValue.parse(#"{"b": 1, "a": {"y": 2, "x": 3}}"#)
        let b = try JSONValue.parse(#"{"a": {"x": 3, "y": 2}, "b": 1}"#)
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(a.serialized() == #"{"b":1,"a":{"y":2,"x":3}}"#)
    }

    /// Go's decoder lets the last of repeated keys win; the member keeps its first place.
    @Test func aRepeatedKeyKeepsTheLastValue() throws {
        let v = try JSONValue.parse(#"{"a": 1, "b": 2, "a": 3}"#)
        #expect(v.objectMembers?.map(\.0) == ["a", "b"])
        #expect(v["a"] == .number(3))
    }

    @Test func numbersOfEveryForm() throws {
        #expect(try JSONValue.parse("[-0, 1E+2, 0.5e-3, 10, -1.25, 1e-2]") == .array([.number(-0.0), .number(100), .number(0.0005), .number(10), .number(-1.25), .number(0.01)]))
    }

    /// Each error says what was found, what would do, and where (line and column).
    @Test(arguments: [
        ("{\"a\": 1,\n \"b\": x}", "unexpected character 'x', expected a value at line 2, column 7"),
        ("[1, 2", "unexpected end of input, expected ',' or ']' at line 1, column 6"),
        ("[1,]", "unexpected character ']', expected a value at line 1, column 4"),
        (#"{"a" 1}"#, "expected ':' after member name \"a\" at line 1, column 6"),
        (#"{"a": 1} x"#, "unexpected character 'x' after the document at line 1, column 10"),
        ("\"tab\there\"", "control characters must be escaped"),
        (#""\q""#, "unknown escape"),
        (#""\ud83d""#, "half of a surrogate pair"),
        (#""\ude00""#, "unpaired low surrogate"),
        ("01", "after the document at line 1, column 2"),
        ("1e999", "number 1e999 is out of range"),
        (String(repeating: "[", count: 100_000), "nesting deeper than 512 levels"),
        ("1" + String(repeating: "0", count: 400), "is out of range"),
    ])
    func errorsSayWhatAndWhere(text: String, message: String) {
        let e = #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(text) }
        #expect(e?.description.contains(message) == true, "\(String(describing: e))")
    }

    @Test func equalityAndHashing() {
        #expect(JSONValue.number(1) != .string("1"))
        #expect(JSONValue.bool(true) != .number(1))
        #expect(JSONValue.null != .object([]))
        #expect(JSONValue.array([.number(1)]) != .array([.number(1), .number(1)]))
        #expect(JSONValue.object([("a", .number(1))]) != .object([("a", .number(2))]))
        #expect(JSONValue.object([("a", .number(1))]) != .object([("A", .number(1))]))
        #expect(JSONValue.object([("a", .null)]) != .object([("a", .null), ("b", .null)]))
        let set: Set<JSONValue> = [.object([("a", .number(1))]), .object([("a", .number(1))]), .array([]), .null]
        #expect(set.count == 3)
    }

    @Test func subscriptIsCaseInsensitiveWithExactMatchFirst() throws {
        let v = try JSONValue.parse(#"{"IPAM": {"Type": "weft"}, "cniVersion": "1.0.0"}"#)
        #expect(v["ipam"]?["type"]?.stringValue == "weft")
        #expect(v["Ipam"]?["TYPE"]?.stringValue == "weft")
        #expect(v["CNIVERSION"]?.stringValue == "1.0.0")
        #expect(v["ipam2"] == nil)

        let both = try JSONValue.parse(#"{"Name": "upper", "name": "lower"}"#)
        #expect(both["name"]?.stringValue == "lower")
        #expect(both["Name"]?.stringValue == "upper")

        // Only objects have members.
        #expect(JSONValue.array([.string("a")])["a"] == nil)
        #expect(JSONValue.string("a")["a"] == nil)
    }

    @Test func accessors() {
        #expect(JSONValue.number(3).intValue == 3)
        #expect(JSONValue.number(-3).intValue == -3)
        #expect(JSONValue.number(3.5).intValue == nil)
        #expect(JSONValue.number(1e16).intValue == nil)
        #expect(JSONValue.string("3").intValue == nil)
        #expect(JSONValue.string("x").stringValue == "x")
        #expect(JSONValue.number(1).stringValue == nil)
        #expect(JSONValue.bool(true).boolValue == true)
        #expect(JSONValue.string("true").boolValue == nil)
        #expect(JSONValue.array([.null]).arrayValue == [.null])
        #expect(JSONValue.object([]).arrayValue == nil)
        #expect(JSONValue.null.isNull)
        #expect(!JSONValue.string("").isNull)
        #expect(JSONValue.null.kindName == "null")
        #expect(JSONValue.bool(true).kindName == "a boolean")
        #expect(JSONValue.number(1).kindName == "a number")
        #expect(JSONValue.string("").kindName == "a string")
        #expect(JSONValue.array([]).kindName == "an array")
        #expect(JSONValue.object([]).kindName == "an object")
    }

    @Test func settingReplacesCaseInsensitivelyOrAppends() {
        let v: JSONValue = .object([("cniVersion", .string("0.4.0")), ("Name", .string("a")), ("type", .string("weft"))])
        let replaced = v.setting("name", to: .string("b"))
        #expect(replaced == .object([("cniVersion", .string("0.4.0")), ("type", .string("weft")), ("name", .string("b"))]))
        let added = v.setting("prevResult", to: .object([]))
        #expect(added["prevResult"] == .object([]))
        #expect(added["name"]?.stringValue == "a")
        let removed = v.setting("NAME", to: nil)
        #expect(removed == .object([("cniVersion", .string("0.4.0")), ("type", .string("weft"))]))
        // Not an object: unchanged.
        #expect(JSONValue.array([]).setting("a", to: .null) == .array([]))
    }

    @Test(arguments: [
        "", "{", "}", "[1, 2", #"{"a": }"#, #"{"a" 1}"#, "{'a': 1}", "[1,,2]", "[,]", #"{,"a": 1}"#, "nul", "tru", "01",
        #""unterminated"#, #"{"a": 1} x"#, "[1] [2]", #"{"a": "\x"}"#, "NaN", "- 1", "{a: 1}",
        "[1,]", #"{"a": 1,}"#, "1.", "1e", "-", ".5", "+1", "0x10", "[1 2]", "// c\n1", "\u{FEFF}1",
    ])
    func invalidJSONThrows(text: String) {
        #expect(throws: JSONValue.ParseError.self, "\(text) should not parse") { try JSONValue.parse(text) }
    }

    @Test func parseErrorHasADescription() {
        let e = #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse("{") }
        #expect(e.map { !$0.description.isEmpty } == true)
    }

    @Test func invalidUTF8Throws() throws {
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22, 0xff, 0xfe, 0x22]) }
        // The error points at the bad byte, after an escape too; overlong and surrogate forms fail.
        let e = #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(Array(#"["ab\ncd"#.utf8) + [0xC3, 0x28, 0x22, 0x5D]) }
        #expect(e?.description == "invalid UTF-8 (byte 0xc3) inside a string at line 1, column 9", "\(String(describing: e))")
        for bad: [UInt8] in [[0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]] {
            #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22] + bad + [0x22]) }
        }
        #expect(try JSONValue.parse([0x22, 0xE2, 0x82, 0xAC, 0x5C, 0x6E, 0xF0, 0x9F, 0x98, 0x80, 0x22]) == .string("€\n😀"))
    }

    /// A long string mixing plain runs and escapes decodes whole.
    @Test func longEscapedStringsDecodeWhole() throws {
        let piece = "abcdefgh\\n"
        let text = "\"" + String(repeating: piece, count: 200_000) + "\""
        let v = try JSONValue.parse(text)
        #expect(v.stringValue == String(repeating: "abcdefgh\n", count: 200_000))
    }

    @Test func pathDescription() {
        #expect(JSONPath("ipam").key("ranges").index(0).index(1).key("subnet").description == "ipam.ranges[0][1].subnet")
        #expect(JSONPath().key("name").description == "name")
        #expect(JSONPath().description == "")
        #expect(JSONPath("prevResult").key("ips").index(2).description == "prevResult.ips[2]")
    }

    @Test func objectsAreEqualWhateverTheMemberOrder() throws {
        let a = try JSONValue.parse(#"{"b":1,"a":{"y":[1,2],"x":true}}"#)
        let b = try JSONValue.parse(#"{"a":{"x":true,"y":[1,2]},"b":1}"#)
        let swapped = JSONValue.object([("b", .number(1)), ("a", .object([("y", .array([.number(1), .number(2)])), ("x", .bool(true))]))])
        #expect(a == b && a == swapped)
        #expect(Set([a, b, swapped]).count == 1, "equal values hash alike")
        #expect(a != (try JSONValue.parse(#"{"b":1,"a":{"y":[2,1],"x":true}}"#)), "array order still counts")
        #expect(a != (try JSONValue.parse(#"{"b":1,"a":{"y":[1,2],"x":true},"c":null}"#)))
        #expect(a != (try JSONValue.parse(#"{"b":1,"c":{"y":[1,2],"x":true}}"#)))
    }
}
