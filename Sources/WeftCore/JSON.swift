#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

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
            // Member order carries no meaning in JSON (and the decoder does not keep it), so
            // objects are equal when they hold the same members in any order.
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

    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch let DecodingError.dataCorrupted(ctx) {
            let underlying = (ctx.underlyingError as? CustomStringConvertible)?.description
            throw ParseError.invalid(underlying ?? ctx.debugDescription)
        } catch {
            throw ParseError.invalid("\(error)")
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

extension JSONValue: Decodable {
    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        if let c = try? decoder.container(keyedBy: Key.self) {
            // allKeys loses the document order; JSON objects are unordered, so sort for stability.
            self = .object(try c.allKeys.sorted { $0.stringValue < $1.stringValue }.map {
                ($0.stringValue, try c.decode(JSONValue.self, forKey: $0))
            })
            return
        }
        if var c = try? decoder.unkeyedContainer() {
            var items: [JSONValue] = []
            while !c.isAtEnd { items.append(try c.decode(JSONValue.self)) }
            self = .array(items)
            return
        }
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else { self = .string(try c.decode(String.self)) }
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
