import Testing
import WeftCore

/// Parses an address the test itself wrote; a typo in a test is a test bug, so trap.
func ip(_ s: String, sourceLocation: SourceLocation = #_sourceLocation) -> IPAddress {
    guard let a = IPAddress(s) else { fatalError("test literal \(s) is not an address (\(sourceLocation))") }
    return a
}

func net(_ s: String) -> IPNetwork {
    guard let n = IPNetwork(s) else { fatalError("test literal \(s) is not a CIDR") }
    return n
}

func ifaddr(_ s: String) -> IPInterfaceAddress {
    guard let a = IPInterfaceAddress(s) else { fatalError("test literal \(s) is not an interface address") }
    return a
}

/// Expects `body` to throw a `CNIError` with `code` whose message contains every string in
/// `mentioning`. Returns the error for further checks.
@discardableResult
func expectCNIError(code: Int, mentioning parts: [String] = [], sourceLocation: SourceLocation = #_sourceLocation,
                    _ body: () throws -> Void) -> CNIError? {
    let e = #expect(throws: CNIError.self, sourceLocation: sourceLocation) { try body() }
    guard let e else { return nil }
    #expect(e.code == code, "expected code \(code), got \(e.code): \(e.msg)", sourceLocation: sourceLocation)
    for p in parts {
        #expect(e.msg.contains(p), "message \"\(e.msg)\" should mention \"\(p)\"", sourceLocation: sourceLocation)
    }
    return e
}
