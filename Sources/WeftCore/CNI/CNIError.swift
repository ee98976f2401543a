/// A CNI error, printed as the spec's error JSON on stdout with a non-zero exit.
/// Codes 0-99 are the spec's; 100+ are weft's own (listed in the README).
public struct CNIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    public var msg: String
    public var details: String

    public init(code: Int, msg: String, details: String = "") {
        self.code = code
        self.msg = msg
        self.details = details
    }

    public var description: String {
        details.isEmpty ? "CNI error \(code): \(msg)" : "CNI error \(code): \(msg) (\(details))"
    }

    public func json(cniVersion: String) -> JSONValue {
        var members: [(String, JSONValue)] = [("cniVersion", .string(cniVersion)), ("code", .number(Double(code))), ("msg", .string(msg))]
        if !details.isEmpty { members.append(("details", .string(details))) }
        return .object(members)
    }

    // The spec's codes.
    public static func incompatibleVersion(_ m: String) -> CNIError { .init(code: 1, msg: m) }
    public static func unsupportedField(_ m: String) -> CNIError { .init(code: 2, msg: m) }
    public static func unknownContainer(_ m: String) -> CNIError { .init(code: 3, msg: m) }
    public static func invalidEnvironment(_ m: String) -> CNIError { .init(code: 4, msg: m) }
    public static func ioFailure(_ m: String) -> CNIError { .init(code: 5, msg: m) }
    public static func decodingFailure(_ m: String, details: String = "") -> CNIError { .init(code: 6, msg: m, details: details) }
    public static func invalidConfig(_ m: String) -> CNIError { .init(code: 7, msg: m) }
    public static func tryAgainLater(_ m: String) -> CNIError { .init(code: 11, msg: m) }
    public static func notReady(_ m: String) -> CNIError { .init(code: 50, msg: m) }
    public static func degraded(_ m: String) -> CNIError { .init(code: 51, msg: m) }

    // weft's own codes.
    public static func rangeExhausted(_ m: String) -> CNIError { .init(code: 100, msg: m) }
    public static func addressUnavailable(_ m: String) -> CNIError { .init(code: 101, msg: m) }
    public static func interfaceExists(_ m: String) -> CNIError { .init(code: 102, msg: m) }
    public static func kernel(_ m: String, details: String = "") -> CNIError { .init(code: 103, msg: m, details: details) }
    public static func checkFailed(_ m: String) -> CNIError { .init(code: 104, msg: m) }
    public static func delegateFailed(_ m: String, details: String = "") -> CNIError { .init(code: 105, msg: m, details: details) }
}
