/// A JSON document as a value. CNI configs are read through this rather than `Decodable`
/// structs for two reasons: Go runtimes and Go-written configs match keys case-insensitively
/// (`HostPort`, `IPAM`), and a bad field must be reported with its full path and the value seen.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            // Member order carries no meaning in JSON, so objects are equal when they hold the
            // same members in any order.
            guard x.count == y.count else { return false }
            if zip(x, y).allSatisfy({ $0.0 == $1.0 && $0.1 == $1.1 }) { return true }
            let members = Dictionary(y, uniquingKeysWith: { first, _ in first })
            return x.allSatisfy { members[$0.0] == $0.1 }
        default: return false
        }
    }

    public func hash(into h: inout Hasher) {
        switch self {
        case .null: h.combine(0)
        case .bool(let b): h.combine(b)
        case .number(let n): h.combine(n)
        case .string(let s): h.combine(s)
        case .array(let a): h.combine(a)
        case .object(let o):
            // Independent of member order, as `==` is.
            var members = 0
            for (k, v) in o {
                var one = Hasher()
                one.combine(k)
                one.combine(v)
                members ^= one.finalize()
            }
            h.combine(o.count)
            h.combine(members)
        }
    }

    /// Member lookup: exact key first, then case-insensitive (Go's encoding/json rule).
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        if let hit = members.first(where: { $0.0 == key }) { return hit.1 }
        let lower = key.lowercased()
        return members.first(where: { $0.0.lowercased() == lower })?.1
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var objectMembers: [(String, JSONValue)]? { if case .object(let o) = self { return o }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }
    public var intValue: Int? {
        if case .number(let d) = self, d.rounded() == d, abs(d) < 1e15 { return Int(d) }
        return nil
    }

    /// Returns a copy with `key` set (replacing any member with that key, case-insensitively).
    public func setting(_ key: String, to value: JSONValue?) -> JSONValue {
        guard case .object(var members) = self else { return self }
        members.removeAll { $0.0.lowercased() == key.lowercased() }
        if let value { members.append((key, value)) }
        return .object(members)
    }

    /// A short description of the JSON type, for error messages.
    public var kindName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    // MARK: text

    public enum ParseError: Error, CustomStringConvertible {
        case invalid(String)
        public var description: String { switch self { case .invalid(let m): m } }
    }

    /// Parses one JSON text (RFC 8259: no comments, no trailing commas, UTF-8). Objects keep
    /// their members in document order; a key repeated exactly keeps its first place and its
    /// last value, as Go's decoder does. (Go also lets `"IPAM"` override an earlier `"ipam"`
    /// when it fills a struct; `subscript` prefers the exact spelling instead.)
    ///
    /// Written here rather than through `JSONDecoder`: decoding a `JSONValue` there instantiates
    /// generic metadata at run time and scans every protocol conformance in the binary, about a
    /// third of the CNI plugin's start-up (~1 ms of ~3.4 ms per invocation), and it would make
    /// every executable link Foundation for this alone.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { buffer throws(ParseError) in
            var parser = Parser(bytes: buffer)
            parser.skipSpace()
            let value = try parser.value(depth: 0)
            parser.skipSpace()
            guard parser.at == buffer.count else { throw parser.failure("unexpected \(parser.describeNext()) after the document") }
            return value
        }
    }

    public static func parse(_ text: String) throws -> JSONValue { try parse(Array(text.utf8)) }

    /// Serialises with members in insertion order, so results read as the spec shows them.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, indent: pretty ? 0 : nil)
        return out
    }

    private func write(to out: inout String, indent: Int?) {
        let nl = indent == nil ? "" : "\n"
        let pad = { (n: Int) in indent == nil ? "" : String(repeating: "    ", count: n) }
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let d):
            if d.rounded() == d && abs(d) < 1e15 { out += String(Int64(d)) } else { out += "\(d)" }
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let a):
            if a.isEmpty { out += "[]"; return }
            out += "[" + nl
            for (i, v) in a.enumerated() {
                out += pad((indent ?? 0) + 1)
                v.write(to: &out, indent: indent.map { $0 + 1 })
                out += (i == a.count - 1 ? "" : ",") + nl
            }
            out += pad(indent ?? 0) + "]"
        case .object(let o):
            if o.isEmpty { out += "{}"; return }
            out += "{" + nl
            for (i, (k, v)) in o.enumerated() {
                out += pad((indent ?? 0) + 1)
                JSONValue.writeString(k, to: &out)
                out += indent == nil ? ":" : ": "
                v.write(to: &out, indent: indent.map { $0 + 1 })
                out += (i == o.count - 1 ? "" : ",") + nl
            }
            out += pad(indent ?? 0) + "}"
        }
    }

    private static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}

/// A recursive-descent JSON reader over UTF-8 bytes.
private struct Parser {
    let bytes: UnsafeBufferPointer<UInt8>
    var at = 0
    /// Deeper nesting is refused rather than risking the stack on hostile input.
    static let maxDepth = 512

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    /// Input quoted in a message, cut short: a document may be megabytes.
    static func clipped(_ s: String) -> String { s.count <= 40 ? s : s.prefix(40) + "…" }

    /// Where `at` is, as a person counts it.
    func failure(_ what: String) -> JSONValue.ParseError {
        var line = 1, column = 1
        for b in bytes[..<min(at, bytes.count)] {
            if b == UInt8(ascii: "\n") { line += 1; column = 1 } else if b & 0xC0 != 0x80 { column += 1 }
        }
        return .invalid("\(what) at line \(line), column \(column)")
    }

    func describeNext() -> String {
        guard at < bytes.count else { return "end of input" }
        let b = bytes[at]
        return b >= 0x20 && b < 0x7F ? "character '\(Character(Unicode.Scalar(b)))'" : "byte 0x\(String(b, radix: 16))"
    }

    mutating func skipSpace() {
        while at < bytes.count {
            switch bytes[at] {
            case 0x20, 0x09, 0x0A, 0x0D: at += 1
            default: return
            }
        }
    }

    mutating func value(depth: Int) throws(JSONValue.ParseError) -> JSONValue {
        guard at < bytes.count else { throw failure("unexpected end of input, expected a value") }
        switch bytes[at] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw failure("unexpected \(describeNext()), expected a value")
        }
    }

    mutating func literal(_ word: StaticString) throws(JSONValue.ParseError) {
        let n = word.utf8CodeUnitCount
        guard at + n <= bytes.count, (0..<n).allSatisfy({ bytes[at + $0] == word.utf8Start[$0] }) else {
            throw failure("unexpected \(describeNext()), expected a value")
        }
        at += n
    }

    mutating func object(depth: Int) throws(JSONValue.ParseError) -> JSONValue {
        guard depth <= Parser.maxDepth else { throw failure("nesting deeper than \(Parser.maxDepth) levels") }
        at += 1
        var members: [(String, JSONValue)] = []
        var index: [String: Int] = [:]
        skipSpace()
        if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return .object([]) }
        while true {
            skipSpace()
            guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw failure("unexpected \(describeNext()), expected a member name in quotes") }
            let key = try string()
            skipSpace()
            guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw failure("unexpected \(describeNext()), expected ':' after member name \"\(Parser.clipped(key))\"") }
            at += 1
            skipSpace()
            let v = try value(depth: depth)
            if let i = index[key] { members[i].1 = v } else { index[key] = members.count; members.append((key, v)) }
            skipSpace()
            guard at < bytes.count else { throw failure("unexpected end of input, expected ',' or '}'") }
            if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
            if bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
            throw failure("unexpected \(describeNext()), expected ',' or '}'")
        }
    }

    mutating func array(depth: Int) throws(JSONValue.ParseError) -> JSONValue {
        guard depth <= Parser.maxDepth else { throw failure("nesting deeper than \(Parser.maxDepth) levels") }
        at += 1
        var items: [JSONValue] = []
        skipSpace()
        if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return .array([]) }
        while true {
            skipSpace()
            items.append(try value(depth: depth))
            skipSpace()
            guard at < bytes.count else { throw failure("unexpected end of input, expected ',' or ']'") }
            if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
            if bytes[at] == UInt8(ascii: "]") { at += 1; return .array(items) }
            throw failure("unexpected \(describeNext()), expected ',' or ']'")
        }
    }

    /// A string from its opening quote: escapes decoded, UTF-8 checked, raw control characters refused.
    mutating func string() throws(JSONValue.ParseError) -> String {
        at += 1
        let start = at
        // The common case, no escapes: one validated copy of the bytes.
        try plainRun()
        if at < bytes.count, bytes[at] == UInt8(ascii: "\"") {
            defer { at += 1 }
            return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
        }
        // With escapes: the decoded bytes collected, then made a String once (appending to a
        // growing String piece by piece costs what it already holds each time).
        var out = Array(bytes[start..<at])
        while true {
            guard at < bytes.count else { throw failure("unexpected end of input inside a string") }
            let b = bytes[at]
            if b == UInt8(ascii: "\"") { at += 1; return String(decoding: out, as: UTF8.self) }
            if b < 0x20 { throw failure("unexpected \(describeNext()) inside a string (control characters must be escaped)") }
            if b == UInt8(ascii: "\\") {
                at += 1
                guard at < bytes.count else { throw failure("unexpected end of input inside a string") }
                let e = bytes[at]
                at += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"): out.append(contentsOf: UTF8.encode(try escapedScalar())!)
                default:
                    at -= 1
                    throw failure("unknown escape \\\(describeNext()) inside a string (known: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)")
                }
                continue
            }
            let runStart = at
            try plainRun()
            out.append(contentsOf: bytes[runStart..<at])
        }
    }

    /// Moves past bytes up to a quote, a backslash or a control character, checking they are
    /// UTF-8; an error points at the first byte that is not.
    mutating func plainRun() throws(JSONValue.ParseError) {
        while at < bytes.count {
            let b = bytes[at]
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b < 0x20 { return }
            if b < 0x80 { at += 1; continue }
            var parser = Unicode.UTF8.ForwardParser()
            var rest = bytes[at...].makeIterator()
            switch parser.parseScalar(from: &rest) {
            case .valid(let scalar): at += scalar.count
            case .error, .emptyInput: throw failure("invalid UTF-8 (byte 0x\(String(b, radix: 16))) inside a string")
            }
        }
    }

    /// After `\u`: four hex digits, and for a high surrogate the `\uXXXX` of its low half.
    mutating func escapedScalar() throws(JSONValue.ParseError) -> Unicode.Scalar {
        let high = try hex4()
        if (0xD800..<0xDC00).contains(high) {
            guard at + 1 < bytes.count, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else {
                throw failure("\\u\(String(high, radix: 16)) is half of a surrogate pair with no \\uDC00–\\uDFFF after it")
            }
            at += 2
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw failure("\\u\(String(low, radix: 16)) does not complete the surrogate pair \\u\(String(high, radix: 16))") }
            return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))!
        }
        guard let scalar = Unicode.Scalar(high) else { throw failure("\\u\(String(high, radix: 16)) is an unpaired low surrogate") }
        return scalar
    }

    mutating func hex4() throws(JSONValue.ParseError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard at < bytes.count, let d = hexDigit(bytes[at]) else { throw failure("unexpected \(describeNext()), expected 4 hex digits after \\u") }
            v = v << 4 | d
            at += 1
        }
        return v
    }

    func hexDigit(_ b: UInt8) -> UInt32? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(b - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, read as a Double (as Go reads into `any`).
    mutating func number() throws(JSONValue.ParseError) -> Double {
        let start = at
        func atDigit() -> Bool { at < bytes.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[at]) }
        func digits() -> Int {
            let from = at
            while atDigit() { at += 1 }
            return at - from
        }
        if bytes[at] == UInt8(ascii: "-") { at += 1 }
        guard atDigit() else {
            throw failure("unexpected \(describeNext()), expected a digit in a number")
        }
        if bytes[at] == UInt8(ascii: "0") {
            at += 1
        } else {
            _ = digits()
        }
        if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
            at += 1
            guard digits() > 0 else { throw failure("unexpected \(describeNext()), expected a digit after the decimal point") }
        }
        if at < bytes.count, bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E") {
            at += 1
            if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") { at += 1 }
            guard digits() > 0 else { throw failure("unexpected \(describeNext()), expected a digit in the exponent") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else {
            var probe = self
            probe.at = start
            throw probe.failure("number \(Parser.clipped(text)) is out of range")
        }
        return d
    }
}

/// A path into a JSON document ("ipam.ranges[0][1].subnet") for error messages.
public struct JSONPath: Sendable, CustomStringConvertible {
    var parts: [String]
    public init(_ root: String = "") { parts = root.isEmpty ? [] : [root] }
    public func key(_ k: String) -> JSONPath { var p = self; p.parts.append((p.parts.isEmpty ? "" : ".") + k); return p }
    public func index(_ i: Int) -> JSONPath { var p = self; p.parts.append("[\(i)]"); return p }
    public var description: String { parts.joined() }
}
