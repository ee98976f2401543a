/// One CNI invocation as the plugin records it for the agent's metrics: a line appended to the
/// file the config names (`eventLog`), `COMMAND SECONDS CODE` (code 0: success). The plugin is
/// a short-lived process; the agent reads what accumulates.
public struct CNIEvent: Sendable, Equatable {
    public var command: String
    public var seconds: Double
    public var code: Int

    public init(command: String, seconds: Double, code: Int) { self.command = command; self.seconds = seconds; self.code = code }

    public var line: String { "\(command) \(seconds) \(code)\n" }

    public init?(line: Substring) {
        let f = line.split(separator: " ")
        guard f.count == 3, let s = Double(f[1]), let c = Int(f[2]), !f[0].isEmpty, f[0].allSatisfy({ $0.isLetter }) else { return nil }
        self.init(command: String(f[0]), seconds: s, code: c)
    }

    /// Complete lines of `bytes` as events (malformed ones skipped), and how many bytes they
    /// took: an unfinished last line is left for the next read.
    public static func parse(_ bytes: ArraySlice<UInt8>) -> (events: [CNIEvent], consumed: Int) {
        guard let lastNewline = bytes.lastIndex(of: 10) else { return ([], 0) }
        let text = String(decoding: bytes[bytes.startIndex...lastNewline], as: UTF8.self)
        return (text.split(separator: "\n").compactMap { CNIEvent(line: $0) }, lastNewline - bytes.startIndex + 1)
    }
}
